"""The real server (`bentoml serve` on loopback): predictions, bad input, probes, metrics, logs.

Given a promoted classifier (numeric, categorical and date features; scikit-learn runtime)
and a promoted regressor (all numeric; ONNX runtime), when clients call the endpoints,
then answers match the registered model and every bad input is a 4xx naming the field.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from components.data import MODEL_VERSION, PREDICTION, REQUEST_ID, TIME
from components.model_runtime import records_of
from components.registry import Registry
from components.store import LocalStore
from testkit.faults import metric_in
from testkit.models import diabetes_frame, wine_frame
from testkit.server import Server, serving_settings

WINE_FEATURES = [c for c in wine_frame().columns if c != "target"]


def wine_records(n: int, start: int = 0) -> list[dict]:
    return records_of(wine_frame()[WINE_FEATURES].iloc[start:start + n])


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory, serving_store: Path):
    tmp = tmp_path_factory.mktemp("wine")
    server = Server(serving_settings(serving_store, "wine", tmp), tmp / "server.log")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory, serving_store: Path):
    tmp = tmp_path_factory.mktemp("diabetes")
    server = Server(serving_settings(serving_store, "diabetes", tmp), tmp / "server.log")
    try:
        yield server.start()
    finally:
        server.stop()


def test_classifier_predicts_one_record(wine: Server, serving_store: Path) -> None:
    r = httpx.post(f"{wine.url}/predict", json={"records": wine_records(1)}, timeout=30)
    assert r.status_code == 200, r.text
    [answer] = r.json()
    expected = Registry(LocalStore(serving_store), "wine").load_model("v1").predict(wine_frame()[WINE_FEATURES].head(1))[0]
    assert answer["prediction"] == expected
    assert set(answer["probabilities"]) == {"class_0", "class_1", "class_2"}
    assert math.isclose(sum(answer["probabilities"].values()), 1.0, abs_tol=1e-4)
    assert answer["model_version"] == "v1" and answer["runtime"] == "sklearn"
    assert re.fullmatch(r"[0-9a-f]{32}", answer["request_id"])


def test_classifier_predicts_many_records_like_the_registered_model(wine: Server, serving_store: Path) -> None:
    frame = wine_frame()[WINE_FEATURES]
    r = httpx.post(f"{wine.url}/predict_many", json={"records": records_of(frame)}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    model = Registry(LocalStore(serving_store), "wine").load_model("v1")
    assert body["predictions"] == model.predict(frame).tolist()
    np.testing.assert_allclose(body["probabilities"], model.predict_proba(frame), atol=1e-5)
    assert body["classes"] == ["class_0", "class_1", "class_2"]
    assert len(set(body["request_ids"])) == len(frame)
    assert body["model_version"] == "v1"


def test_concurrent_single_requests_are_batched(wine: Server) -> None:
    import asyncio

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            rs = await asyncio.gather(*(client.post(f"{wine.url}/predict", json={"records": wine_records(1, i)})
                                        for i in range(64)))
            return [r.status_code for r in rs]

    before = httpx.get(f"{wine.url}/metrics").text
    assert asyncio.run(burst()) == [200] * 64
    after = httpx.get(f"{wine.url}/metrics").text
    calls = metric_in(after, "flywheel_batch_size_count") - metric_in(before, "flywheel_batch_size_count")
    rows = metric_in(after, "flywheel_batch_size_sum") - metric_in(before, "flywheel_batch_size_sum")
    assert rows == 64
    assert calls < 64, "64 concurrent requests should share model calls"


BASE = wine_records(1)[0]


def with_(**changes) -> dict:
    return {**BASE, **changes}


def without(name: str) -> dict:
    return {k: v for k, v in BASE.items() if k != name}


BAD_BODIES = {
    "wrong type": ({"records": [with_(alcohol="strong")]}, "alcohol"),
    "boolean for a number": ({"records": [with_(hue=True)]}, "hue"),
    "number for a category": ({"records": [with_(region=1.5)]}, "region"),
    "bad date": ({"records": [with_(harvest="last tuesday")]}, "harvest"),
    "missing field": ({"records": [without("proline")]}, "proline"),
    "every record bad": ({"records": [with_(malic_acid=[1]), with_(ash="x")]}, "malic_acid"),
    "record not an object": ({"records": [7]}, "records"),
    "records not a list": ({"records": {"a": 1}}, "records"),
    "no records key": ({"rows": [BASE]}, "records"),
    "empty list": ({"records": []}, "records"),
}


@pytest.mark.parametrize("endpoint", ["predict", "predict_many"])
@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_input_is_a_4xx_naming_the_field(wine: Server, endpoint: str, case: str) -> None:
    body, field = BAD_BODIES[case]
    r = httpx.post(f"{wine.url}/{endpoint}", json=body, timeout=30)
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
    assert field in r.text, (case, r.text)


@pytest.mark.parametrize("literal,field", [("Infinity", "proline"), ("-Infinity", "hue")])
def test_inf_is_refused(wine: Server, literal: str, field: str) -> None:
    text = json.dumps({"records": [with_(**{field: 0.5})]}).replace("0.5", literal)
    r = httpx.post(f"{wine.url}/predict", content=text, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    assert field in r.text and "finite" in r.text


@pytest.mark.parametrize("field", ["magnesium", "ash"])  # with and without missing values in training
def test_nan_is_a_null(wine: Server, field: str) -> None:
    text = json.dumps({"records": [with_(**{field: 0.5})]}).replace("0.5", "NaN")
    before = metric_in(httpx.get(f"{wine.url}/metrics").text, "flywheel_null_values_total", feature=field)
    r = httpx.post(f"{wine.url}/predict", content=text, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text
    assert metric_in(httpx.get(f"{wine.url}/metrics").text, "flywheel_null_values_total", feature=field) == before + 1


def test_a_bad_record_is_refused_in_its_slot_and_the_others_are_served(wine: Server) -> None:
    before = httpx.get(f"{wine.url}/metrics").text
    body = {"records": [BASE, with_(malic_acid=[1]), 7, with_(ash=None, colour="red")]}
    r = httpx.post(f"{wine.url}/predict", json=body, timeout=30)
    assert r.status_code == 200, r.text
    first, bad, not_object, tolerated = r.json()
    assert first["prediction"] in ("class_0", "class_1", "class_2") and "error" not in first
    assert "malic_acid" in bad["error"] and bad["errors"] == [{"field": "malic_acid", "problem": "must be a number, got a list [1]"}]
    assert "prediction" not in bad and "JSON object" in not_object["error"]
    assert tolerated["prediction"] and tolerated["ignored_fields"] == ["colour"]
    after = httpx.get(f"{wine.url}/metrics").text
    assert metric_in(after, "flywheel_rejected_records_total", field="malic_acid") == \
        metric_in(before, "flywheel_rejected_records_total", field="malic_acid") + 1
    assert metric_in(after, "flywheel_ignored_fields_total", field="colour") == \
        metric_in(before, "flywheel_ignored_fields_total", field="colour") + 1
    assert metric_in(after, "flywheel_null_values_total", feature="ash") == \
        metric_in(before, "flywheel_null_values_total", feature="ash") + 1


def test_malformed_json_is_a_400(wine: Server) -> None:
    r = httpx.post(f"{wine.url}/predict", content=b'{"records": [{"alcohol": 1,', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.text


def test_oversized_payload_is_a_413(wine: Server) -> None:
    big = b'{"records": [' + b" " * (33 << 20) + b"]}"
    r = httpx.post(f"{wine.url}/predict_many", content=big, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "limit" in r.text


def test_too_many_records_is_a_4xx(wine: Server) -> None:
    r = httpx.post(f"{wine.url}/predict_many", json={"records": [BASE] * 100_001}, timeout=60)
    assert r.status_code == 400 and "limit" in r.text


def test_unknown_category_is_served_and_counted(wine: Server) -> None:
    before = metric_in(httpx.get(f"{wine.url}/metrics").text, "flywheel_unknown_categories_total", feature="region")
    r = httpx.post(f"{wine.url}/predict", json={"records": [with_(region="atlantis")]})
    assert r.status_code == 200, r.text
    after = metric_in(httpx.get(f"{wine.url}/metrics").text, "flywheel_unknown_categories_total", feature="region")
    assert after == before + 1


def test_server_keeps_answering_after_bad_input(wine: Server) -> None:
    for body in (b"{", b'{"records": [1, 2]}', b"\xff\xfe"):
        httpx.post(f"{wine.url}/predict", content=body, headers={"content-type": "application/json"})
    r = httpx.post(f"{wine.url}/predict", json={"records": wine_records(1)})
    assert r.status_code == 200


def test_probes_and_metrics(wine: Server) -> None:
    assert httpx.get(f"{wine.url}/healthz").status_code == 200
    assert httpx.get(f"{wine.url}/readyz").status_code == 200
    httpx.post(f"{wine.url}/predict", json={"records": wine_records(3)})
    httpx.post(f"{wine.url}/predict", json={"records": [with_(alcohol="x")]})
    text = httpx.get(f"{wine.url}/metrics").text
    assert metric_in(text, "flywheel_model_info", version="v1", runtime="sklearn") == 1
    assert metric_in(text, "flywheel_requests_total", api="predict", status="200") >= 1
    assert metric_in(text, "flywheel_requests_total", api="predict", status="400") >= 1
    assert metric_in(text, "flywheel_request_duration_seconds_count", api="predict", status="200") >= 1
    # `endpoint` is the Prometheus Operator's own target label: none of ours may carry it
    assert not re.search(r'^flywheel_\w+\{[^}]*\bendpoint="', text, re.M)
    assert metric_in(text, "flywheel_batch_size_count") >= 1
    assert sum(metric_in(text, "flywheel_predictions_total", **{"class": c}) for c in ("class_0", "class_1", "class_2")) >= 3
    assert metric_in(text, "flywheel_model_swaps_total", outcome="swapped") == 1
    assert re.search(r'^flywheel_model_swaps_total\{outcome="refused"\} 0\.0$', text, re.M)  # a zero before any refusal


def test_served_records_reach_the_prediction_log(wine: Server, serving_store: Path) -> None:
    r = httpx.post(f"{wine.url}/predict_many", json={"records": wine_records(5)})
    ids = set(r.json()["request_ids"])
    store = LocalStore(serving_store)
    deadline = time.monotonic() + 15
    found = pd.DataFrame()
    while time.monotonic() < deadline:
        keys = store.list("predictions/wine/")
        if keys:
            found = pd.concat([pd.read_parquet(store.url(k)) for k in keys])
            if ids <= set(found[REQUEST_ID]):
                break
        time.sleep(0.3)
    assert ids <= set(found[REQUEST_ID])
    assert all(re.search(r"predictions/wine/date=\d{4}-\d{2}-\d{2}/[^/]+\.parquet$", k) for k in keys)
    rows = found[found[REQUEST_ID].isin(ids)]
    assert set(rows[MODEL_VERSION]) == {"v1"}
    assert str(rows[TIME].dtype).startswith("datetime64") and str(rows[TIME].dt.tz) == "UTC"
    assert set(WINE_FEATURES) <= set(rows.columns) and rows[PREDICTION].isin(["class_0", "class_1", "class_2"]).all()


def test_feedback_is_written_and_checked(wine: Server, serving_store: Path) -> None:
    rid = httpx.post(f"{wine.url}/predict", json={"records": wine_records(1)}).json()[0]["request_id"]
    ok = httpx.post(f"{wine.url}/feedback", json={"request_id": rid, "label": "class_1"})
    assert ok.status_code == 200, ok.text
    bad = httpx.post(f"{wine.url}/feedback", json={"request_id": rid, "label": "merlot"})
    assert bad.status_code == 400 and "label" in bad.text
    missing = httpx.post(f"{wine.url}/feedback", json={"label": "class_1"})
    assert missing.status_code == 400 and "request_id" in missing.text
    store = LocalStore(serving_store)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        keys = store.list("feedback/wine/")
        if keys and rid in set(pd.concat([pd.read_parquet(store.url(k)) for k in keys])[REQUEST_ID]):
            break
        time.sleep(0.3)
    fb = pd.concat([pd.read_parquet(store.url(k)) for k in store.list("feedback/wine/")])
    assert list(fb.columns) == ["_request_id", "_time", "_label"]
    assert fb.loc[fb[REQUEST_ID] == rid, "_label"].tolist() == ["class_1"]


def test_regressor_serves_through_onnx(diabetes: Server, serving_store: Path) -> None:
    frame = diabetes_frame().drop(columns=["target"])
    one = httpx.post(f"{diabetes.url}/predict", json={"records": records_of(frame.head(1))})
    assert one.status_code == 200, one.text
    [answer] = one.json()
    assert answer["runtime"] == "onnx" and "probabilities" not in answer
    many = httpx.post(f"{diabetes.url}/predict_many", json={"records": records_of(frame)}, timeout=30).json()
    expected = Registry(LocalStore(serving_store), "diabetes").load_model("v1").predict(frame)
    np.testing.assert_allclose(many["predictions"], expected, rtol=1e-4, atol=1e-3)
    assert math.isclose(answer["prediction"], expected[0], rel_tol=1e-4)
    text = httpx.get(f"{diabetes.url}/metrics").text
    assert metric_in(text, "flywheel_model_info", version="v1", runtime="onnx") == 1
    assert metric_in(text, "flywheel_predictions_total", **{"class": "value"}) >= len(frame) + 1


def test_regressor_refuses_a_string(diabetes: Server) -> None:
    rec = records_of(diabetes_frame().drop(columns=["target"]).head(1))[0]
    r = httpx.post(f"{diabetes.url}/predict", json={"records": [{**rec, "bmi": "0.3"}]})
    assert r.status_code == 400 and "bmi" in r.text


def test_feedback_outcomes_are_counted(wine: Server) -> None:
    """Before: only accepted feedback was counted, under another name; unknown ids were accepted."""
    before = httpx.get(f"{wine.url}/metrics").text
    rid = httpx.post(f"{wine.url}/predict", json={"records": wine_records(1)}).json()[0]["request_id"]
    assert httpx.post(f"{wine.url}/feedback", json={"request_id": rid, "label": "class_2"}).status_code == 200
    assert httpx.post(f"{wine.url}/feedback", json={"request_id": rid, "label": "merlot"}).status_code == 400
    unknown = httpx.post(f"{wine.url}/feedback", json={"request_id": "order-1234", "label": "class_2"})
    assert unknown.status_code == 404 and "order-1234" in unknown.text and "32" in unknown.text
    after = httpx.get(f"{wine.url}/metrics").text
    for outcome in ("accepted", "rejected", "unknown_request"):
        got = metric_in(after, "flywheel_feedback_total", outcome=outcome) - metric_in(before, "flywheel_feedback_total", outcome=outcome)
        assert got == 1, f"{outcome}: {got}"
    assert "flywheel_prediction_log_lag_seconds" in after
    assert metric_in(after, "flywheel_prediction_log_records_total", outcome="buffered") >= 1
