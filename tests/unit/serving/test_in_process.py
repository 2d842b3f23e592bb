"""The service class constructed and its API methods called in process, as BentoML's testing guide
does ("Test API endpoints"): no HTTP server, no worker process. The HTTP behaviour has its own
tests (test_http.py); these are about what the methods do."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import pandas as pd
import pytest

from components.data import REQUEST_ID
from components.model_runtime import records_of
from components.registry import Registry
from components.store import LocalStore
from testkit.models import LOGISTIC, add_version, wine_frame
from testkit.server import serving_settings


def _service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frame: pd.DataFrame):
    """The service class constructed in this process, on a store with one promoted classifier of ``frame``."""
    from services.serving.service import FlywheelServing

    store = tmp_path / "store"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(Registry(LocalStore(store), "wine"), frame, "target", LOGISTIC)
    # the service reads its settings at its edge, from the environment, as a worker does
    for name, value in serving_settings(store, "wine", tmp_path, log_flush_rows=1).to_env().items():
        monkeypatch.setenv(name, value)
    svc = FlywheelServing()
    assert svc.holder.wait_ready(60), "the champion did not load within 60 s"
    return svc


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """On a wine classifier (served by scikit-learn: its categorical step has no ONNX equivalent)."""
    svc = _service(tmp_path, monkeypatch, wine_frame())
    yield svc
    svc.shutdown()


@pytest.fixture
def onnx_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """On a classifier of the wine data's numeric features, served through its ONNX export."""
    svc = _service(tmp_path, monkeypatch, wine_frame().drop(columns=["region", "harvest"]))
    yield svc
    svc.shutdown()


def test_the_service_predicts_and_takes_feedback_in_process(service, tmp_path: Path) -> None:
    frame = wine_frame()
    records = records_of(frame.drop(columns=["target"]).head(3))
    bad = {**records[0], "alcohol": "strong"}

    answers = asyncio.run(service.predict([*records, bad]))
    feedback = service.feedback(request_id=answers[0]["request_id"], label=frame["target"].iloc[0])
    service.shutdown()  # flushes both logs, as SIGTERM does

    assert [a["model_version"] for a in answers[:3]] == ["v1"] * 3
    assert [a["prediction"] for a in answers[:3]] == frame["target"].head(3).tolist()
    assert answers[3]["errors"] == [{"field": "alcohol", "problem": "must be a number, got a string 'strong'"}]
    assert feedback == {"request_id": answers[0]["request_id"], "accepted": True}
    logged = pd.concat(pd.read_parquet(p) for p in (tmp_path / "store" / "predictions" / "wine").rglob("*.parquet"))
    assert sorted(logged[REQUEST_ID]) == sorted(a["request_id"] for a in answers[:3])


def test_concurrent_requests_are_answered_from_one_model_call(service, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    frame = wine_frame()
    records = records_of(frame.drop(columns=["target"]).head(4))
    runtime = service.holder.current.runtime
    calls: list[int] = []

    def counted(features):
        prediction = type(runtime).predict(runtime, features)
        calls.append(len(prediction.values))
        return prediction

    monkeypatch.setattr(runtime, "predict", counted)

    async def clients() -> list[list[dict]]:
        return await asyncio.gather(*(service.predict([r]) for r in records))

    answers = asyncio.run(clients())
    service.shutdown()

    assert calls == [4]  # one model call for the four requests, not one each
    assert [a[0]["prediction"] for a in answers] == frame["target"].head(4).tolist()
    logged = pd.concat(pd.read_parquet(p) for p in (tmp_path / "store" / "predictions" / "wine").rglob("*.parquet"))
    assert sorted(logged[REQUEST_ID]) == sorted(a[0]["request_id"] for a in answers)


def test_a_clean_request_to_an_onnx_model_builds_no_frame(onnx_service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The validated columns go to ONNX and to the log as they are: building a frame and taking it
    apart again was about 1 ms of each request (30 features)."""
    service = onnx_service
    assert service.holder.current.runtime_name == "onnx"
    records = records_of(wine_frame().drop(columns=["region", "harvest"]).drop(columns=["target"]).head(2))
    built: list[int] = []
    init = pd.DataFrame.__init__

    def counted(self, *args, **kwargs):
        built.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "__init__", counted)
    answers = asyncio.run(service.predict(records))
    monkeypatch.undo()

    assert [a["model_version"] for a in answers] == ["v1", "v1"]
    assert built == []
