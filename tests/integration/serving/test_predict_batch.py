"""Batch prediction: a whole file scored in chunks, with the service's validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.data import PREDICTION, DataError
from components.predict import predict_batch
from components.registry import Registry
from components.settings import load_settings
from components.store import LocalStore
from testkit.models import wine_frame


@pytest.fixture
def settings(serving_store: Path, tmp_path: Path):
    return load_settings(store=str(serving_store), model="wine", spill_dir=str(tmp_path / "spill"))


def test_csv_in_chunks_reports_bad_rows_and_scores_good_ones(settings, serving_store: Path, tmp_path: Path) -> None:
    frame = wine_frame().drop(columns=["target"])
    frame = pd.concat([frame] * 6, ignore_index=True)  # 1068 rows, 11 chunks of 100
    frame["harvest"] = frame["harvest"].dt.strftime("%Y-%m-%d")
    frame["alcohol"] = frame["alcohol"].astype(object)
    frame.loc[5, "alcohol"] = "strong"
    frame.loc[777, "harvest"] = "someday"
    frame.loc[900, "ash"] = np.inf
    frame.loc[901, "proline"] = np.nan  # never missing in training: imputed, not refused
    frame["customer_id"] = np.arange(len(frame))
    src = tmp_path / "in.csv"
    frame.to_csv(src, index=False)
    result = predict_batch(settings, str(src), str(tmp_path / "out.parquet"), chunk_rows=100)
    assert (result.rows_read, result.rows_scored, result.rows_rejected) == (1068, 1065, 3), result.first_problems
    errors = pd.read_csv(result.errors_output)
    assert errors[["_row", "field"]].values.tolist() == [[5, "alcohol"], [777, "harvest"], [900, "ash"]]
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert len(out) == 1065 and 5 not in set(out["_row"])
    model = Registry(LocalStore(serving_store), "wine").load_model("v1")
    full = pd.concat([wine_frame().drop(columns=["target"])] * 6, ignore_index=True)
    full.loc[901, "proline"] = np.nan
    expected = model.predict(full)
    np.testing.assert_array_equal(out[PREDICTION].to_numpy(), np.delete(expected, [5, 777, 900]))
    assert {"_proba_class_0", "_proba_class_1", "_proba_class_2", "customer_id"} <= set(out.columns)
    assert result.version == "v1" and "row 5, field 'alcohol'" in result.first_problems[0]


def test_parquet_prefix_in_the_store_to_a_folder(settings, serving_store: Path, tmp_path: Path) -> None:
    store = LocalStore(serving_store)
    frame = wine_frame().drop(columns=["target"])
    for i in range(3):
        store.write(f"datasets/batch/part-{i}.parquet", frame.iloc[i * 50:(i + 1) * 50].to_parquet(index=False))
    result = predict_batch(settings, "datasets/batch/", "store:scores/batch", version="v1", chunk_rows=20)
    assert (result.rows_read, result.rows_rejected) == (150, 0) and result.errors_output is None
    keys = store.list("scores/batch/")
    assert len(keys) == 9  # 3 files x ceil(50/20) chunks
    out = pd.concat([pd.read_parquet(store.url(k)) for k in keys], ignore_index=True)
    assert out["_row"].tolist() == list(range(150))


def test_missing_feature_column_is_a_data_error(settings, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    wine_frame().drop(columns=["target", "proline"]).to_csv(src, index=False)
    with pytest.raises(DataError, match="proline"):
        predict_batch(settings, str(src), str(tmp_path / "out.csv"))


def test_flywheel_predict_scores_booleans_nulls_and_extra_columns(tmp_path: Path) -> None:
    """`flywheel predict` on a CSV as users export it: True/False text, empty cells, columns the model does not use."""
    import subprocess
    import sys
    import warnings

    from components.data import DatasetSpec
    from testkit.models import LOGISTIC, add_version, shop_frame

    store = tmp_path / "store"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(Registry(LocalStore(store), "shop"), shop_frame(), "returned", LOGISTIC,
                    spec=DatasetSpec("memory", "returned", timestamp="ordered_at"))
    rows = shop_frame(200, seed=5).drop(columns=["returned"])
    rows["member"] = rows["member"].map({True: "true", False: "False"}).astype(object)
    rows.loc[3, "member"] = None
    rows.loc[4, "basket"] = None
    rows.loc[5, "member"] = "perhaps"
    rows["warehouse"] = "north"  # not a feature: ignored
    src = tmp_path / "orders.csv"
    rows.to_csv(src, index=False)
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "predict", "--data", str(src), "--output",
                           str(tmp_path / "scored.parquet"), "--model", "shop", "--store", str(store)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["rows_scored"], result["rows_rejected"]) == (199, 1)
    assert "row 5, field 'member'" in result["first_problems"][0]
    out = pd.read_parquet(tmp_path / "scored.parquet")
    assert 5 not in set(out["_row"]) and {3, 4} <= set(out["_row"])
    assert set(out[PREDICTION]) <= {"returned", "kept"}
