"""The same validation rules over JSON, Arrow IPC and Parquet bodies, on the real server.

Given a promoted classifier trained on orders (an id, a timestamp, a boolean, a category,
a sparse numeric), when clients send whole rows to /predict_many in each format, then
nulls, booleans and unused fields are served and counted, a bad record is refused in its
slot, a request with nothing to score is a 400 naming the fields, and the id and timestamp
sent are logged with each prediction.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.data import REQUEST_ID, DatasetSpec
from components.formats import ARROW, PARQUET
from components.registry import Registry
from components.store import LocalStore
from components.validation import Validator
from testkit.faults import metric_in
from testkit.models import LOGISTIC, add_version, shop_frame
from testkit.server import Server, serving_settings

SPEC = DatasetSpec("memory", "returned", timestamp="ordered_at")
FORMATS = ["json", "arrow", "parquet"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("shop")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(Registry(LocalStore(tmp / "store"), "shop"), shop_frame(), "returned", LOGISTIC, spec=SPEC)
    server = Server(serving_settings(tmp / "store", "shop", tmp), tmp / "server.log")
    try:
        yield server.start(), tmp / "store"
    finally:
        server.stop()


def send(url: str, columns: dict[str, list[Any]], fmt: str) -> tuple[int, dict[str, Any], httpx.Headers]:
    """POST the records in ``fmt``; the answer as {"predictions", "request_ids", "errors" {record: text}} (or the error body)."""
    if fmt == "json":
        records = pd.DataFrame(columns).astype(object).to_dict("records")
        records = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in records]
        r = httpx.post(f"{url}/predict_many", content=json.dumps({"records": records}),  # Infinity included
                       headers={"content-type": "application/json"}, timeout=60)
        body = r.json()
        if r.status_code != 200:
            return r.status_code, body, r.headers
        errors: dict[int, str] = {}
        for e in body["errors"]:
            errors[e["record"]] = f"{errors[e['record']]}; " if e["record"] in errors else ""
            errors[e["record"]] += f"field {e['field']!r}: {e['problem']}"
        return 200, {"predictions": body["predictions"], "request_ids": body["request_ids"], "errors": errors}, r.headers
    table = pa.table(columns)
    sink = io.BytesIO()
    if fmt == "arrow":
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    else:
        pq.write_table(table, sink)
    r = httpx.post(f"{url}/predict_many", content=sink.getvalue(),
                   headers={"content-type": ARROW if fmt == "arrow" else PARQUET}, timeout=60)
    if r.status_code != 200:
        return r.status_code, r.json(), r.headers
    assert r.headers["content-type"] == (ARROW if fmt == "arrow" else PARQUET)
    answer = (pa.ipc.open_stream(r.content).read_all() if fmt == "arrow" else pq.read_table(io.BytesIO(r.content))).to_pandas()
    errors = {i: e for i, e in enumerate(answer["error"]) if pd.notna(e)}
    return 200, {"predictions": answer["prediction"].tolist(), "request_ids": answer["request_id"].tolist(),
                 "errors": errors}, r.headers


def expected(store: Path, columns: dict[str, list[Any]]) -> list[Any]:
    """What the registered model predicts for the records that can be scored."""
    reg = Registry(LocalStore(store), "shop")
    checked = Validator(reg.schema("v1")).check_frame(pd.DataFrame(columns))
    return reg.load_model("v1").predict(checked.frame).tolist()


TOLERATED = {
    "order_id": ["A1", "A2", "A3", "A4", "A5"],
    "ordered_at": ["2026-02-01T10:00:00Z"] * 5,
    "basket": [10.0, None, 30.5, 40.0, 55.0],
    "items": [1, 2, 3, 4, 5],
    "member": [True, False, None, True, False],
    "channel": ["web", "app", "moon", None, "store"],
    "coupon": [None, None, 5.0, None, None],
    "note": ["gift", "x", "y", "z", "w"],
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_nulls_booleans_unknown_categories_and_unused_fields_are_served(shop: Any, fmt: str) -> None:
    server, store = shop
    before = httpx.get(f"{server.url}/metrics").text
    status, answer, headers = send(server.url, TOLERATED, fmt)
    assert status == 200, answer
    assert answer["errors"] == {} and answer["predictions"] == expected(store, TOLERATED)
    assert headers["x-flywheel-ignored-fields"] == "note" and headers["x-flywheel-rejected-records"] == "0"
    after = httpx.get(f"{server.url}/metrics").text
    for name, label, value, n in [("flywheel_null_values_total", "feature", "basket", 1),
                                  ("flywheel_null_values_total", "feature", "member", 1),
                                  ("flywheel_null_values_total", "feature", "channel", 1),
                                  ("flywheel_unknown_categories_total", "feature", "channel", 1),
                                  ("flywheel_ignored_fields_total", "field", "note", 5)]:
        assert metric_in(after, name, **{label: value}) == metric_in(before, name, **{label: value}) + n, name


BAD_RECORDS = {
    "basket": [10.0, float("inf"), 30.5, 40.0],
    "items": [1, 2, 3, 4],
    "member": [1, 0, 2, 1],  # 0/1 are booleans, 2 is not
    "channel": ["web", "app", "store", "web"],
    "coupon": [None, None, None, 1.0],
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_bad_record_is_refused_in_its_slot(shop: Any, fmt: str) -> None:
    server, store = shop
    status, answer, headers = send(server.url, BAD_RECORDS, fmt)
    assert status == 200, answer
    assert set(answer["errors"]) == {1, 2}
    assert "'basket'" in answer["errors"][1] and "finite" in answer["errors"][1]
    assert "'member'" in answer["errors"][2] and "true or false" in answer["errors"][2]
    assert answer["predictions"][1] is None and answer["request_ids"][2] is None
    good = [answer["predictions"][0], answer["predictions"][3]]
    assert good == expected(store, BAD_RECORDS)
    assert headers["x-flywheel-rejected-records"] == "2"


@pytest.mark.parametrize("fmt", FORMATS)
def test_nothing_to_score_is_a_400_naming_every_field(shop: Any, fmt: str) -> None:
    server, _ = shop
    columns = {"basket": ["lots", "more"], "items": [1, 2], "member": [True, False], "channel": [1.5, 2.5],
               "coupon": [None, None]}
    status, answer, _ = send(server.url, columns, fmt)
    assert status == 400
    text = json.dumps(answer)
    assert "basket" in text and "channel" in text


@pytest.mark.parametrize("fmt", FORMATS)
def test_booleans_as_text_and_numbers_are_accepted(shop: Any, fmt: str) -> None:
    server, store = shop
    for member in (["true", "FALSE", "True"], [1, 0, 1]):
        columns = {"basket": [20.0, 30.0, 40.0], "items": [1, 1, 1], "member": member,
                   "channel": ["web"] * 3, "coupon": [None] * 3}
        status, answer, _ = send(server.url, columns, fmt)
        assert status == 200 and answer["errors"] == {}, answer
        assert answer["predictions"] == expected(store, {**columns, "member": [True, False, True]})


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_unreadable_columnar_body_is_a_400(shop: Any, fmt: str) -> None:
    server, _ = shop
    r = httpx.post(f"{server.url}/predict_many", content=b"certainly not a table",
                   headers={"content-type": ARROW if fmt == "arrow" else PARQUET})
    assert r.status_code == 400 and "body" in r.text


def test_json_booleans_in_every_spelling(shop: Any) -> None:
    server, _ = shop
    base = {"basket": 20.0, "items": 2, "channel": "web", "coupon": None}
    r = httpx.post(f"{server.url}/predict", json={"records": [{**base, "member": v} for v in (True, 1, "true", 0, "no")]})
    assert r.status_code == 200, r.text
    answers = r.json()
    assert all("prediction" in a for a in answers[:4])
    assert "member" in answers[4]["error"]


def test_id_and_timestamp_sent_are_logged_with_the_prediction(shop: Any) -> None:
    server, store = shop
    status, answer, _ = send(server.url, TOLERATED, "arrow")
    assert status == 200
    ids = set(answer["request_ids"])
    st = LocalStore(store)
    deadline = time.monotonic() + 15
    rows = pd.DataFrame()
    while time.monotonic() < deadline:
        keys = st.list("predictions/shop/")
        if keys:
            logged = pd.concat([pd.read_parquet(st.url(k)) for k in keys])
            rows = logged[logged[REQUEST_ID].isin(ids)]
            if len(rows) == len(ids):
                break
        time.sleep(0.3)
    assert len(rows) == 5
    assert sorted(rows["order_id"]) == TOLERATED["order_id"]
    assert set(rows["ordered_at"].astype(str)) == {"2026-02-01T10:00:00Z"}
    assert rows["basket"].isna().sum() == 1 and rows["channel"].isna().sum() == 1, "nulls are logged as nulls"
    assert "note" not in rows.columns


def test_not_ready_is_a_quiet_503_and_strict_mode_refuses_unused_fields(tmp_path: Path) -> None:
    settings = serving_settings(tmp_path / "store", "strict", tmp_path)
    server = Server(settings, tmp_path / "server.log", extra_env={"FLYWHEEL_SERVING_STRICT_FIELDS": "true"})
    try:
        server.start(ready=False)
        for _ in range(3):
            r = httpx.post(f"{server.url}/predict", json={"records": [{"basket": 1.0}]})
            assert r.status_code == 503 and "retry" in r.json()["error"] and r.headers["retry-after"] == "1"
        assert httpx.post(f"{server.url}/predict_many", json={"records": [{}]}).status_code == 503
        assert "Traceback" not in server.log_text() and "[ERROR]" not in server.log_text()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            add_version(Registry(LocalStore(tmp_path / "store"), "strict"), shop_frame(), "returned", LOGISTIC, spec=SPEC)
        deadline = time.monotonic() + 60
        while httpx.get(f"{server.url}/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        record = {"basket": 20.0, "items": 2, "member": True, "channel": "web", "coupon": None}
        assert httpx.post(f"{server.url}/predict", json={"records": [record]}).status_code == 200
        r = httpx.post(f"{server.url}/predict", json={"records": [{**record, "note": "x"}]})
        assert r.status_code == 400 and "note" in r.text and "strict" in r.text
    finally:
        server.stop()
