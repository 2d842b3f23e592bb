"""Batch prediction: a whole file scored in chunks, with the service's validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.data import PREDICTION, DataError
from components.predict import predict_batch
from components.registry import Registry
from components.settings import load_settings
from components.store import LocalStore
from tests.serving.models import wine_frame


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
    frame.loc[900, "ash"] = np.nan
    frame["customer_id"] = np.arange(len(frame))
    src = tmp_path / "in.csv"
    frame.to_csv(src, index=False)
    result = predict_batch(settings, str(src), str(tmp_path / "out.parquet"), chunk_rows=100)
    assert (result.rows_read, result.rows_scored, result.rows_rejected) == (1068, 1065, 3)
    errors = pd.read_csv(result.errors_output)
    assert errors[["_row", "field"]].values.tolist() == [[5, "alcohol"], [777, "harvest"], [900, "ash"]]
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert len(out) == 1065 and 5 not in set(out["_row"])
    model = Registry(LocalStore(serving_store), "wine").load_model("v1")
    good = wine_frame().drop(columns=["target"])
    expected = np.tile(model.predict(good), 6)
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
