"""The pure parts without HTTP: validator, model holder, ONNX export (the log: test_prediction_log.py)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from components.data import DatasetSpec, infer_schema
from components.onnx_export import export_onnx
from components.predict import InvalidInput, RecordValidator
from components.registry import Registry
from components.store import LocalStore
from services.serving.model import ModelHolder, load_version
from tests.serving.models import LINEAR, LOGISTIC, add_version, diabetes_frame, wine_frame


@pytest.fixture(scope="module")
def validator() -> RecordValidator:
    return RecordValidator(infer_schema(wine_frame(), DatasetSpec("memory", "target")), max_records=10)


GOOD = {"alcohol": 13.0, "malic_acid": 2, "ash": 2.4, "alcalinity_of_ash": 15.0, "magnesium": None,
        "total_phenols": 2.8, "flavanoids": 3.0, "nonflavanoid_phenols": 0.3, "proanthocyanins": 2.0,
        "color_intensity": 5.0, "hue": 1.0, "od280": 3.0, "proline": 1000.0, "region": "north",
        "harvest": "2021-03-04T10:00:00+02:00"}


def test_validator_builds_the_model_frame(validator: RecordValidator) -> None:
    rows = validator.validate([GOOD, {**GOOD, "region": "atlantis", "proline": 99999.0}])
    f = rows.frame
    assert f["malic_acid"].dtype == np.float64 and np.isnan(f.loc[0, "magnesium"])
    assert f["region"].tolist() == ["north", "atlantis"]
    assert f.loc[0, "harvest"] == pd.Timestamp("2021-03-04 08:00:00"), "ISO with offset becomes naive UTC"
    assert rows.unknown_categories == {"region": 1} and rows.out_of_range == {"proline": 1}


@pytest.mark.parametrize("record,field,words", [
    ({**GOOD, "alcohol": "13"}, "alcohol", "must be a number"),
    ({**GOOD, "alcohol": float("inf")}, "alcohol", "finite"),
    ({**GOOD, "alcohol": float("nan")}, "alcohol", "must not be NaN"),
    ({**GOOD, "ash": None}, "ash", "must not be null"),
    ({k: v for k, v in GOOD.items() if k != "hue"}, "hue", "required"),
    ({**GOOD, "extra": 1}, "extra", "not a feature"),
    ({**GOOD, "harvest": "soon"}, "harvest", "ISO 8601"),
    ({**GOOD, "region": ["north"]}, "region", "must be a string"),
])
def test_validator_names_record_field_and_problem(validator: RecordValidator, record, field, words) -> None:
    with pytest.raises(InvalidInput) as info:
        validator.validate([GOOD, record])
    [p] = info.value.problems
    assert (p.record, p.field) == (1, field) and words in p.problem, p
    assert f"record 1, field {field!r}" in str(info.value)


def test_validator_limits_and_batch_mode(validator: RecordValidator) -> None:
    with pytest.raises(InvalidInput, match="more than the limit of 10"):
        validator.validate([GOOD] * 11)
    rows, problems = validator.check([GOOD, {**GOOD, "hue": "x"}, GOOD, {**GOOD, "ash": None}])
    assert rows.frame.index.tolist() == [0, 2]
    assert [(p.record, p.field) for p in problems] == [(1, "hue"), (3, "ash")]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    reg = Registry(LocalStore(tmp_path_factory.mktemp("holder") / "store"), "diabetes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(reg, diabetes_frame(), "target", LINEAR)
    return reg


def test_holder_swaps_to_a_new_champion_and_refuses_a_broken_one(registry: Registry) -> None:
    events: list[tuple[str, str]] = []
    holder = ModelHolder(registry, listener=lambda e, v, rt, d: events.append((e, v)))
    assert holder.refresh() and holder.current.version == "v1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v2 = add_version(registry, diabetes_frame(), "target", {**LINEAR, "params": {"alpha": 10.0}})
    before = holder.current
    assert holder.refresh() and holder.current.version == v2 and holder.current is not before
    v3 = registry.claim_version()
    files = {n: registry.read(v2, n) for n in ("schema.json", "model.joblib", "metrics.json")}
    ref = pd.read_parquet(registry.store.url(registry.key(v2, "reference.parquet")))
    ref["_prediction"] = ref["_prediction"] + 1000  # the model disagrees with its own registration
    files["reference.parquet"] = ref.to_parquet(index=False)
    registry.write_version(v3, files, {})
    registry.promote(v3, "test")
    assert not holder.refresh() and holder.current.version == v2
    assert events == [("swapped", "v1"), ("swapped", v2), ("refused", v3)]


def test_pinned_version_ignores_the_champion(registry: Registry) -> None:
    holder = ModelHolder(registry, version="v1")
    holder.refresh()
    assert holder.current.version == "v1" and holder.wanted() == "v1"


def test_onnx_export_numeric_pipeline_passes_and_serves(registry: Registry) -> None:
    report = json.loads(registry.read("v1", "onnx.json"))
    assert report["converted"] and report["passed"] and report["max_abs_diff"] <= report["tolerance"]
    loaded = load_version(registry, "v1")
    assert loaded.runtime_name == "onnx"
    assert load_version(registry, "v1", prefer_onnx=False).runtime_name == "sklearn"


def test_onnx_export_reports_unsupported_steps() -> None:
    from components.features import split
    from components.train import make_model

    frame = wine_frame()
    schema = infer_schema(frame, DatasetSpec("memory", "target"))
    train, holdout = split(frame, schema, 0.25, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_model(schema, LOGISTIC, 0).fit(train[schema.feature_names], train["target"])
    data, report = export_onnx(model, holdout[schema.feature_names], "classification")
    assert data is None and report["converted"] is False
    assert "FunctionTransformer" in report["reason"]


def test_fast_path_matches_the_exact_path_and_falls_back_on_errors(validator: RecordValidator) -> None:
    big = RecordValidator(validator.schema, max_records=1000)
    records = [{**GOOD, "alcohol": 11.0 + i / 100, "magnesium": None if i % 3 else 100} for i in range(200)]
    fast = big.validate(records)
    exact, problems = big.check(records)
    assert problems == []
    pd.testing.assert_frame_equal(fast.frame.reset_index(drop=True), exact.frame.reset_index(drop=True))
    bad = [dict(r) for r in records]
    bad[150]["ash"] = None
    with pytest.raises(InvalidInput, match="record 150, field 'ash'"):
        big.validate(bad)
