"""The pure parts without HTTP: validator, model holder, ONNX export (the log: test_prediction_log.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from components.data import DatasetSpec, infer_schema
from components.model_runtime import load_version
from components.onnx_export import export_onnx
from components.registry import Registry
from components.store import LocalStore, StoreError
from components.validation import InvalidInput, Validator
from services.serving.holder import ModelHolder
from testkit.models import LINEAR, LOGISTIC, add_version, diabetes_frame, wine_frame


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(infer_schema(wine_frame(), DatasetSpec("memory", "target")), max_records=10)


GOOD = {"alcohol": 13.0, "malic_acid": 2, "ash": 2.4, "alcalinity_of_ash": 15.0, "magnesium": None,
        "total_phenols": 2.8, "flavanoids": 3.0, "nonflavanoid_phenols": 0.3, "proanthocyanins": 2.0,
        "color_intensity": 5.0, "hue": 1.0, "od280": 3.0, "proline": 1000.0, "region": "north",
        "harvest": "2021-03-04T10:00:00+02:00"}


def test_validator_builds_the_model_frame(validator: Validator) -> None:
    rows = validator.validate_records([GOOD, {**GOOD, "region": "atlantis", "proline": 99999.0}])
    f = rows.frame
    assert f["malic_acid"].dtype == np.float64 and np.isnan(f.loc[0, "magnesium"])
    assert f["region"].tolist() == ["north", "atlantis"]
    assert f.loc[0, "harvest"] == pd.Timestamp("2021-03-04 08:00:00"), "ISO with offset becomes naive UTC"
    assert rows.unknown_categories == {"region": 1} and rows.out_of_range == {"proline": 1}
    assert rows.nulls == {"magnesium": 2} and rows.problems == []


@pytest.mark.parametrize("record,field,words", [
    ({**GOOD, "alcohol": "13"}, "alcohol", "must be a number"),
    ({**GOOD, "alcohol": float("inf")}, "alcohol", "finite"),
    ({**GOOD, "hue": True}, "hue", "must be a number, got a boolean"),
    ({k: v for k, v in GOOD.items() if k != "hue"}, "hue", "required"),
    ({**GOOD, "harvest": "soon"}, "harvest", "ISO 8601"),
    ({**GOOD, "region": ["north"]}, "region", "must be a string"),
    ({**GOOD, "region": 1.5}, "region", "must be a string"),
])
def test_a_bad_record_is_refused_by_itself(validator: Validator, record, field, words) -> None:
    checked = validator.check_records([GOOD, record, GOOD])
    [p] = checked.problems
    assert (p.record, p.field) == (1, field) and words in p.problem, p
    assert checked.frame.index.tolist() == [0, 2] and checked.rejected == 1
    with pytest.raises(InvalidInput) as info:
        validator.validate_records([record])
    assert f"record 0, field {field!r}" in str(info.value)


def test_nulls_and_unused_fields_are_counted_not_refused(validator: Validator) -> None:
    checked = validator.check_records([{**GOOD, "ash": None, "alcohol": float("nan"), "customer": "c1"},
                                       {**GOOD, "customer": "c2", "note": "x"}])
    assert checked.problems == [] and len(checked) == 2
    assert checked.nulls == {"ash": 1, "alcohol": 1, "magnesium": 2}
    assert checked.ignored == {"customer": 2, "note": 1}
    strict = Validator(validator.schema, strict_fields=True).check_records([{**GOOD, "note": "x"}, GOOD])
    assert [(p.record, p.field) for p in strict.problems] == [(0, "note")] and len(strict) == 1


def test_every_problem_of_a_request_is_named(validator: Validator) -> None:
    with pytest.raises(InvalidInput) as info:
        validator.validate_records([{**GOOD, "alcohol": "x", "region": 2.5}, 7])
    text = str(info.value)
    assert "record 0, field 'alcohol'" in text and "record 0, field 'region'" in text and "record 1" in text


def test_validator_limits_and_batch_mode(validator: Validator) -> None:
    with pytest.raises(InvalidInput, match="more than the limit of 10"):
        validator.check_records([GOOD] * 11)
    with pytest.raises(InvalidInput, match="must be a list"):
        validator.check_records({"a": 1})
    rows = validator.check_records([GOOD, {**GOOD, "hue": "x"}, GOOD, {**GOOD, "ash": float("inf")}])
    assert rows.frame.index.tolist() == [0, 2]
    assert [(p.record, p.field) for p in rows.problems] == [(1, "hue"), (3, "ash")]


def test_boolean_kind_accepts_true_false_01_and_strings() -> None:
    frame = pd.DataFrame({"flag": [True, False] * 30, "x": np.arange(60.0), "y": [0, 1] * 30})
    schema = infer_schema(frame, DatasetSpec("memory", "y"))
    assert schema.column("flag").kind == "boolean"
    checked = Validator(schema).check_records([{"flag": v, "x": 1.0} for v in
                                               (True, False, 1, 0, "true", "FALSE", None, "maybe", 2)])
    assert checked.frame["flag"].tolist()[:6] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert np.isnan(checked.frame["flag"].tolist()[6])
    assert [(p.record, p.field) for p in checked.problems] == [(7, "flag"), (8, "flag")]
    assert "must be true or false" in checked.problems[0].problem


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


class OutageStore(LocalStore):
    """A real local store that fails to read keys ending in ``failing`` while ``down``, as S3 does when unreachable."""

    down = False

    def __init__(self, root: Path, failing: str) -> None:
        super().__init__(root)
        self.failing = failing

    def read(self, key: str) -> bytes:
        if self.down and key.endswith(self.failing):
            raise StoreError(f"store {self.uri} is unreachable while trying to read {key}")
        return super().read(key)


def test_a_store_outage_reading_onnx_json_refuses_the_version_instead_of_serving_it_without_onnx(tmp_path: Path) -> None:
    store = OutageStore(tmp_path / "store", "/onnx.json")
    registry = Registry(store, "diabetes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        version = add_version(registry, diabetes_frame(), "target", LINEAR)
    events: list[tuple[str, str, str]] = []
    holder = ModelHolder(registry, listener=lambda e, v, rt, why: events.append((e, v, why)))
    store.down = True
    assert not holder.refresh() and holder.current is None
    [(event, refused, why)] = events
    assert (event, refused) == ("refused", version)
    assert why.startswith(f"onnx.json of version {version} cannot be read from the store: store ") and "unreachable" in why
    store.down = False  # the store is back: the same version serves through ONNX, as registered
    assert load_version(registry, version).runtime_name == "onnx"


def test_a_corrupt_onnx_json_is_reported_as_such_and_scikit_learn_serves(tmp_path: Path) -> None:
    registry = Registry(LocalStore(tmp_path / "store"), "diabetes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        good = add_version(registry, diabetes_frame(), "target", LINEAR)
    corrupt = registry.claim_version()
    files = {n: registry.read(good, n) for n in ("schema.json", "model.joblib", "metrics.json", "reference.parquet",
                                                  "model.onnx")}
    registry.write_version(corrupt, {**files, "onnx.json": b'{"converted": tru'}, {})
    loaded = load_version(registry, corrupt)
    assert loaded.runtime_name == "sklearn"
    assert loaded.fallback_reason.startswith(f"onnx.json of version {corrupt} is not valid JSON (")
    assert loaded.fallback_reason.endswith("); serving scikit-learn")


def test_onnx_export_reports_unsupported_steps() -> None:
    from components.split import split
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


def test_json_and_frame_inputs_give_the_same_answer(validator: Validator) -> None:
    big = Validator(validator.schema, max_records=1000)
    records = [{**GOOD, "alcohol": 11.0 + i / 100, "magnesium": None if i % 3 else 100} for i in range(200)]
    records[150] = {**records[150], "ash": "x"}
    from_json = big.check_records(records)
    from_frame = big.check_frame(pd.DataFrame(records))
    pd.testing.assert_frame_equal(from_json.frame, from_frame.frame)
    assert from_json.problems == from_frame.problems == [from_json.problems[0]]
    assert (from_json.problems[0].record, from_json.problems[0].field) == (150, "ash")


def _every_kind_schema() -> Any:
    frame = wine_frame()
    frame["member"] = frame.index % 3 == 0
    frame["order_id"] = [f"O{i}" for i in frame.index]
    frame["seen_at"] = pd.Timestamp("2026-01-01") + pd.to_timedelta(frame.index, unit="h")
    return infer_schema(frame, DatasetSpec("memory", "target", timestamp="seen_at", id_columns=("order_id",)))


# values per kind: the plain JSON ones first, then ones only the columnar pass handles
PLAIN_VALUES = {"numeric": [12.5, 13, None, 0.0, -4.25, 99999.0, 2**62, float("nan")],
                "boolean": [True, False, None],
                "categorical": ["north", "south", "atlantis", None, ""],
                "datetime": ["2021-03-04T10:00:00+02:00", "2021-03-04", None, "2021-03-04T10:00:00.5Z"]}
OTHER_VALUES = {"numeric": ["13", True, float("inf"), 2**70, [1]],
                "boolean": [1, 0, "true", 2, 1.0],
                "categorical": [7, True, 1.5, {"a": 1}],
                "datetime": ["soon", 1_600_000_000, True]}


def _record(schema: Any, rng: np.random.Generator, dirty: bool) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for c in schema.features:
        pool = PLAIN_VALUES[c.kind] + (OTHER_VALUES[c.kind] if dirty and rng.uniform() < 0.1 else [])
        record[c.name] = pool[rng.integers(len(pool))]
    if rng.uniform() < 0.3:
        record["order_id"] = ["A-1", None, 17][rng.integers(3 if dirty else 2)]
    if rng.uniform() < 0.3:
        record["seen_at"] = "2026-01-02T00:00:00Z"
    if rng.uniform() < 0.3:
        record["note"] = "unused"
    if dirty and rng.uniform() < 0.05:
        del record["hue"]
    return record


@pytest.mark.parametrize("strict", [False, True])
def test_plain_pass_of_small_requests_equals_the_columnar_pass(strict: bool) -> None:
    """Given requests of a few records, clean and not, the answer is the columnar pass's, whichever pass runs."""
    schema = _every_kind_schema()
    fast, columnar = Validator(schema, strict_fields=strict), Validator(schema, strict_fields=strict, plain_records=0)
    rng = np.random.default_rng(7)
    plain_taken = 0
    for i in range(400):
        records = [_record(schema, rng, dirty=i % 2 == 1) for _ in range(rng.integers(1, 6))]
        plain_taken += fast._check_plain(records) is not None
        got, want = fast.check_records(records), columnar.check_records(records)
        pd.testing.assert_frame_equal(got.frame, want.frame, check_exact=True)
        if want.passthrough is None:
            assert got.passthrough is None
        else:
            pd.testing.assert_frame_equal(got.passthrough, want.passthrough, check_exact=True)
        assert (got.total, got.problems, got.nulls, got.unknown_categories, got.out_of_range, got.ignored) == \
            (want.total, want.problems, want.nulls, want.unknown_categories, want.out_of_range, want.ignored), records
    assert plain_taken > (50 if strict else 150), "the plain pass must run for clean requests"


@pytest.mark.parametrize("n", [1, 3, 1024, 1025, 5000, 10_000, 100_000])
def test_request_ids_are_32_hex_digits_numbered_in_record_order(n: int) -> None:
    from services.serving.service import REQUEST_ID_FORMAT, request_ids

    ids = request_ids(n).tolist()
    assert len(ids) == len(set(ids)) == n and all(REQUEST_ID_FORMAT.fullmatch(i) for i in ids)
    assert len({i[:20] for i in ids}) == 1 and [int(i[20:]) for i in ids] == list(range(n))


@pytest.mark.parametrize("n", [0, 1, 1024, 1025, 100_000])
@pytest.mark.parametrize("value", ["v0001", "", "version-ä"])
def test_repeated_text_is_the_value_on_every_record(n: int, value: str) -> None:
    import pyarrow as pa

    from services.serving.service import repeated_text

    column = repeated_text(value, n)
    column.validate(full=True)
    assert column.type == pa.string() and column.to_pylist() == [value] * n
