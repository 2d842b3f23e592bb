"""Stage functions on scikit-learn's bundled real datasets and on generated messy data."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from components import evaluate, ingest, register, split, train, validate
from components.data import DataError, DatasetSpec, infer_schema, infer_task
from components.package import package
from components.registry import Registry
from components.store import open_store
from components.synthetic import churn

REAL = {
    "breast_cancer": (load_breast_cancer, "classification", 0.9),
    "wine": (load_wine, "classification", 0.85),
    "diabetes": (load_diabetes, "regression", 0.3),
}


def _csv(tmp_path, frame: pd.DataFrame, name: str = "data.csv") -> str:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


def _train_direct(settings, spec: DatasetSpec):
    """Every stage called directly, as the pipeline calls them."""
    ing = ingest.ingest(spec, settings)
    validate.validate(ing.frame, ing.schema).raise_for_errors()
    tr, ho = split.split(ing.frame, ing.schema, settings.holdout_fraction, settings.seed)
    results = [train.score_candidate(tr, ing.schema, c, 3, 0, 5000) for c in train.candidates(ing.schema.task)[:3]]
    best = train.best(results)
    model = train.refit(tr, ing.schema, best["candidate"], 0)
    return ing, tr, ho, best, model


@pytest.mark.parametrize("name", list(REAL))
def test_real_datasets_train_and_register(name, settings, tmp_path):
    loader, task, floor = REAL[name]
    path = _csv(tmp_path, loader(as_frame=True).frame)
    ing, tr, ho, best, model = _train_direct(settings, DatasetSpec(path, "target"))
    assert ing.schema.task == task
    ev = evaluate.evaluate(model, None, ho, ing.schema)
    metric = ev["primary_metric"]
    assert ev["challenger"][metric] > floor
    reg = Registry(open_store(settings.store, settings), name)
    made = package(model, tr, ho, ing.schema, 0)
    decision = register.register(reg, made, ing.schema, ev, best, ing.fingerprint, "test-run", None, settings)
    assert decision.promoted and reg.champion().version == decision.version
    files = reg.manifest(decision.version)["files"]
    assert {"model.joblib", "schema.json", "metrics.json", "reference.parquet", "card.md", "onnx.json"} <= set(files)
    assert all(reg.read(decision.version, name) == data for name, data in made.files().items())  # byte for byte
    ref = pd.read_parquet(__import__("io").BytesIO(reg.read(decision.version, "reference.parquet")))
    assert {"_prediction", "_label", *ing.schema.feature_names} <= set(ref.columns)
    assert ing.fingerprint in reg.read(decision.version, "card.md").decode()
    # the model that comes back from the registry predicts what the trained one did
    X = ho[ing.schema.feature_names]
    np.testing.assert_allclose(reg.load_model(decision.version).predict(X), model.predict(X))
    # the same data and model again: nothing new is registered
    same = register.register(reg, made, ing.schema, ev, best, ing.fingerprint, "test-run-2", decision.version, settings)
    assert same.version == decision.version and not same.promoted and reg.versions() == [decision.version]
    # a challenger (other data) that is no better than the champion is registered but kept out
    again = register.register(reg, made, ing.schema, evaluate.evaluate(model, model, ho, ing.schema), best,
                              "other-data", "test-run-3", decision.version, settings)
    assert not again.promoted and "does not beat" in again.reason
    assert reg.champion().version == decision.version and len(reg.versions()) == 2


def test_messy_data_with_dates_categories_nulls(settings, tmp_path):
    frame = churn(3000, seed=3)
    path = _csv(tmp_path, frame)
    spec = DatasetSpec(path, "churned", timestamp="event_time")
    ing, tr, ho, best, model = _train_direct(settings, spec)
    kinds = {c.name: c.kind for c in ing.schema.features}
    assert kinds["signup_date"] == "datetime" and kinds["plan"] == "categorical" and kinds["age"] == "numeric"
    assert "customer_id" in ing.schema.id_columns and "customer_id" not in kinds
    assert ing.schema.column("income").null_rate > 0.05
    assert tr["event_time"].max() <= ho["event_time"].min()  # time-aware split
    # unseen categories and missing values at prediction time do not break the model
    probe = ho[ing.schema.feature_names].head(5).copy()
    probe.loc[probe.index[0], "plan"] = "never-seen"
    probe.loc[probe.index[1], ["age", "device", "signup_date"]] = [None, None, None]
    assert len(model.predict(probe)) == 5
    assert evaluate.score(model, ho, ing.schema)["roc_auc"] > 0.65


def test_parquet_folder_of_many_files(settings, tmp_path):
    frame = churn(1200, seed=4)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, part in enumerate(np.array_split(frame, 3)):
        part.to_parquet(folder / f"part-{i}.parquet", index=False)
    ing = ingest.ingest(DatasetSpec(str(folder), "churned"), settings)
    assert len(ing.frame) == 1200 and len(ing.files) == 3


def test_fingerprint_follows_content(settings, tmp_path):
    frame = churn(500, seed=5)
    path = _csv(tmp_path, frame)
    spec = DatasetSpec(path, "churned")
    first = ingest.fingerprint(spec, settings)[0]
    assert ingest.fingerprint(spec, settings)[0] == first
    frame.loc[0, "age"] = 99
    frame.to_csv(path, index=False)
    assert ingest.fingerprint(spec, settings)[0] != first


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.iloc[:0], "no rows"),
        (lambda f: f.assign(churned=0), "only one class"),
        (lambda f: f.assign(leak=f["churned"].map({0: "stay", 1: "gone"})), "'leak' leaks the target"),
        (lambda f: f.assign(leak_num=f["churned"] * 3.5 + 1), "'leak_num' leaks the target"),
    ],
)
def test_validation_gate_names_the_column(settings, tmp_path, mutate, message):
    frame = mutate(churn(400, seed=6))
    spec = DatasetSpec(_csv(tmp_path, frame), "churned")
    ing = ingest.ingest(spec, settings) if len(frame) else None
    report = validate.validate(frame, infer_schema(frame, spec)) if ing is None else validate.validate(ing.frame, ing.schema)
    assert not report.ok
    assert any(message in e for e in report.errors), report.errors
    with pytest.raises(DataError, match="data validation failed"):
        report.raise_for_errors()


def test_sparse_constant_empty_and_boolean_columns_train_with_warnings(settings, tmp_path):
    frame = churn(400, seed=6)
    n = len(frame)
    frame["sparse"] = np.where(np.arange(n) % 10 < 7, np.nan, np.arange(n) % 5)  # 70% missing
    frame["nearly_empty"] = np.where(np.arange(n) % 100 == 0, 1.0, np.nan)  # 99% missing
    frame["empty"] = None
    frame["region_slice"] = "north"  # training on one slice: constant
    frame["member"] = np.where(np.arange(n) % 3 == 0, "True", "False")
    frame.loc[5, "member"] = None
    ing = ingest.ingest(DatasetSpec(_csv(tmp_path, frame), "churned"), settings)
    report = validate.validate(ing.frame, ing.schema)
    assert report.ok, report.errors
    sparse = ing.schema.column("sparse")
    assert sparse.missing_indicator and sparse.kind == "numeric"
    assert ing.schema.column("member").kind == "boolean"
    dropped = {d["name"]: d["reason"] for d in ing.schema.dropped}
    assert set(dropped) == {"nearly_empty", "empty", "region_slice"} and "constant" in dropped["region_slice"]
    assert any("'sparse' is 70% missing" in w for w in report.warnings)
    assert any("'region_slice' is dropped: constant" in w for w in report.warnings)
    table = {r["column"]: r for r in ing.schema.column_table()}
    assert table["sparse"]["action"].startswith("kept: imputed, with a missing-indicator")
    assert table["empty"]["action"] == "dropped: entirely empty" and table["customer_id"]["kind"] == "id"
    model = train.refit(ing.frame, ing.schema, train.candidates("classification")[0], 0)
    prep = model.named_steps["prep"]
    assert "sparse" in prep.named_transformers_ and prep.named_transformers_["sparse"][0].indicator_ is not None
    loaded = type(ing.schema).from_json(ing.schema.to_json())
    assert loaded.dropped == ing.schema.dropped and loaded.column("sparse").missing_indicator


def test_constant_target_is_an_error_and_every_error_is_listed(settings, tmp_path):
    frame = churn(400, seed=6).assign(churned=1, copy=lambda f: f["age"])
    frame["leak"] = frame["churned"].astype(str)
    report = validate.validate(frame, infer_schema(frame, DatasetSpec("x", "churned", task="classification")))
    assert any("only one class" in e for e in report.errors)
    frame = churn(400, seed=6)
    frame["leak_a"] = frame["churned"].map({0: "stay", 1: "gone"})
    frame["leak_b"] = frame["churned"] * 2.0
    ing = ingest.ingest(DatasetSpec(_csv(tmp_path, frame), "churned"), settings)
    report = validate.validate(ing.frame, ing.schema)
    with pytest.raises(DataError) as info:
        report.raise_for_errors()
    text = str(info.value)
    assert "2 errors" in text and "'leak_a' leaks" in text and "'leak_b' leaks" in text
    assert text.count("\n  - ") == 2 and "more" not in text
    assert "- column 'leak_a'" in report.markdown() and "- column 'leak_b'" in report.markdown()


def test_missing_rate_jump_against_the_champion_is_an_error(settings, tmp_path):
    frame = churn(400, seed=7)
    champion = ingest.ingest(DatasetSpec(_csv(tmp_path, frame), "churned"), settings).schema
    assert champion.column("income").null_rate < 0.1
    broken = frame.copy()
    broken.loc[np.arange(len(broken)) % 10 < 6, "income"] = np.nan  # about 60% missing now
    ing = ingest.ingest(DatasetSpec(_csv(tmp_path, broken, "b.csv"), "churned"), settings)
    errors = validate.validate(ing.frame, ing.schema, champion).errors
    assert any(e.startswith("column 'income' is 6") and "against" in e and "data break" in e for e in errors), errors
    assert validate.validate(ing.frame, ing.schema).ok, "without a champion the same data trains"


def test_schema_break_against_champion(settings, tmp_path):
    frame = churn(400, seed=7)
    spec = DatasetSpec(_csv(tmp_path, frame), "churned")
    champion = ingest.ingest(spec, settings).schema
    broken = frame.drop(columns=["income"]).assign(plan=np.arange(len(frame)) % 4)
    new = ingest.ingest(DatasetSpec(_csv(tmp_path, broken, "b.csv"), "churned"), settings).schema
    errors = validate.validate(ingest.ingest(DatasetSpec(_csv(tmp_path, broken, "b.csv"), "churned"), settings).frame,
                               new, champion).errors
    assert any("'income' used by the champion is missing" in e for e in errors)
    assert any("'plan' changed from categorical to numeric" in e for e in errors)


def test_imbalance_is_a_warning_not_an_error(settings, tmp_path):
    frame = churn(2000, seed=8)
    frame["churned"] = (np.arange(len(frame)) % 50 == 0).astype(int)
    ing = ingest.ingest(DatasetSpec(_csv(tmp_path, frame), "churned"), settings)
    report = validate.validate(ing.frame, ing.schema)
    assert report.ok and any("imbalanced" in w for w in report.warnings)


def test_bad_inputs_name_file_and_column(settings, tmp_path):
    with pytest.raises(DataError, match="nope.csv"):
        ingest.ingest(DatasetSpec(str(tmp_path / "nope.csv"), "y"), settings)
    path = _csv(tmp_path, churn(100, seed=9))
    with pytest.raises(DataError, match="target column 'churn' is not in the data"):
        ingest.ingest(DatasetSpec(path, "churn"), settings)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="bad.parquet cannot be read as Parquet"):
        ingest.ingest(DatasetSpec(str(bad), "y"), settings)


@pytest.mark.parametrize("name, data, kind", [
    ("bad.parquet", b"not parquet at all", "Parquet"),
    ("cut.csv.gz", gzip.compress(b"a,b\n" + b"1,2\n" * 1000, mtime=0)[:40], "CSV"),  # a gzip stream cut short
    ("bad.csv.gz", b"not gzip at all", "CSV"),
    ("binary.csv", b"a,b\n\xff\xfe\x00\x81,\x00\n", "CSV"),  # not UTF-8
], ids=["not-parquet", "cut-gzip", "not-gzip", "not-utf8"])
def test_a_file_pandas_cannot_parse_is_one_sentence_naming_it(settings, tmp_path, name, data, kind):
    """Each of the error types pandas and pyarrow raise for a bad file is a DataError (components/data.py)."""
    from components.data import read_source
    from components.sources import resolve

    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError, match=rf"{re.escape(name)} cannot be read as {kind}: "):
        read_source(resolve(str(tmp_path / name), settings), settings)


def test_task_inference():
    assert infer_task(pd.Series(["a", "b", "a"])) == "classification"
    assert infer_task(pd.Series([0, 1] * 50)) == "classification"
    assert infer_task(pd.Series(np.linspace(0, 1, 100))) == "regression"
    assert infer_task(pd.Series(np.arange(100))) == "regression"


def test_feature_selection_and_cleanup_are_fit_on_training_rows(settings, tmp_path):
    frame = churn(1500, seed=10).assign(dup_age=lambda f: f["age"], near_const=0.0)
    frame.loc[0, "near_const"] = 1e-9
    ing = ingest.ingest(DatasetSpec(_csv(tmp_path, frame), "churned"), settings)
    cand = next(c for c in train.candidates("classification") if c["select"])
    model = train.refit(ing.frame, ing.schema, cand, 0)
    prep_width = model.named_steps["prep"].transform(ing.frame[ing.schema.feature_names]).shape[1]
    assert model.named_steps["clean"].keep_.sum() < prep_width  # duplicate and near-constant dropped
    assert model.named_steps["select"].get_support().sum() < model.named_steps["clean"].keep_.sum()


def test_a_model_package_round_trips_and_names_a_missing_file(tmp_path):
    from components.package import ModelPackage

    with_onnx = ModelPackage(b"pickle", b"parquet", {"converted": True, "passed": True}, b"onnx")
    without = ModelPackage(b"pickle", b"parquet", {"converted": False, "reason": "no converter"})
    for made in (with_onnx, without):
        folder = tmp_path / str(made.onnx is not None)
        made.save(folder)
        assert ModelPackage.load(folder) == made
    (tmp_path / "True" / "reference.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="reference.parquet is missing"):
        ModelPackage.load(tmp_path / "True")


@pytest.mark.parametrize("timestamp", ["event_time", None], ids=["time-ordered", "stratified"])
def test_the_split_of_a_file_in_arrow_slices_is_the_split_of_the_frame(settings, tmp_path, timestamp, monkeypatch):
    """The features task splits the ingested file by row positions, in slices (components/split.py):
    the same rows, in the same order, as the frame's split."""
    from components import split as splitting
    from components.store import write_parquet_file

    monkeypatch.setattr(splitting, "SLICE_ROWS", 97)  # many slices, one of them partial
    ing = ingest.ingest(DatasetSpec(_csv(tmp_path, churn(1000, seed=8)), "churned", timestamp=timestamp), settings)
    write_parquet_file(ing.frame, tmp_path / "dataset.parquet", rows=300)
    rows = splitting.split_file(str(tmp_path / "dataset.parquet"), ing.schema, 0.25, 3, str(tmp_path / "tr.parquet"),
                                str(tmp_path / "ho.parquet"))
    tr, ho = split.split(pd.read_parquet(tmp_path / "dataset.parquet"), ing.schema, 0.25, 3)
    assert rows == (len(tr), len(ho)) == (750, 250)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "tr.parquet"), tr)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ho.parquet"), ho)


@pytest.mark.parametrize("name", ["d.parquet", "d.csv"])
def test_ids_and_excluded_columns_are_recorded_but_never_read(settings, tmp_path, name):
    """Column projection: ids and excluded columns are no features, so ingest does not read them (components/data.py)."""
    from components.data import load

    frame = churn(300, seed=9)
    path = tmp_path / name
    frame.to_parquet(path) if name.endswith(".parquet") else frame.to_csv(path, index=False)
    spec = DatasetSpec(str(path), "churned", id_columns=("customer_id",), exclude=("region",))
    loaded, _ = load(spec, settings)
    assert {"customer_id", "region"}.isdisjoint(loaded.columns) and loaded.attrs["left_out"] == ["customer_id", "region"]
    ing = ingest.ingest(spec, settings)
    assert "customer_id" in ing.schema.id_columns and ing.schema.excluded == ["region"]
    with pytest.raises(DataError, match="column 'nope' given to leave out is not in the data"):
        ingest.ingest(DatasetSpec(str(path), "churned", id_columns=("nope",)), settings)
