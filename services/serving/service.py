"""The BentoML service: HTTP endpoints over the model holder, the validator and the logs.

    POST /predict        {"records": [{...}]}  a few records; adaptive batching across requests
    POST /predict_many   {"records": [...]}     many records in one call (columnar answer)
    POST /feedback       {"request_id": "...", "label": ...}
    GET  /healthz /readyz /metrics              (BentoML's; /readyz asks __is_ready__)

The logic lives in plain modules next to this one; this file only wires it to HTTP.
Configuration is read here, at the edge: the Settings object and the MODEL_VERSION variable.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Annotated, Any

import bentoml
import numpy as np
import pandas as pd
from bentoml.exceptions import ServiceUnavailable
from pydantic import AfterValidator, Field

from components.data import LABEL, MODEL_VERSION, PREDICTION, REQUEST_ID, TIME
from components.predict import InvalidInput, Problem, Rows
from components.registry import Registry
from components.settings import Settings, load_settings
from components.store import open_store
from services.serving.metrics import HttpMiddleware, metrics
from services.serving.model import CHAMPION, LoadedModel, ModelHolder
from services.serving.prediction_log import RecordLog

log = logging.getLogger("flywheel.serving")
PROBA = "_proba"
_service: FlywheelServing | None = None  # the one instance of this worker process


class _Validated:
    """A record that passed validation, with the model that validated it (and will answer it)."""

    __slots__ = ("model", "record")

    def __init__(self, model: LoadedModel, record: dict[str, Any]) -> None:
        self.model = model
        self.record = record


def _validate_batch_input(records: list[dict[str, Any]]) -> list[_Validated]:
    """Validation in request parsing, before batching: a bad request fails alone, with a 400."""
    model = _require_model()
    try:
        rows = model.validator.validate(records)
    except InvalidInput as exc:
        raise exc.as_validation_error(prefix=()) from None
    _count_drift(rows)
    return [_Validated(model, r) for r in rows.records]


def _require_model() -> LoadedModel:
    model = _service.holder.current if _service is not None else None
    if model is None:
        raise ServiceUnavailable("no model is loaded yet; retry when /readyz answers 200")
    return model


def _count_drift(rows: Rows) -> None:
    m = metrics()
    for feature, n in rows.unknown_categories.items():
        m.unknown_categories.labels(feature).inc(n)
    for feature, n in rows.out_of_range.items():
        m.out_of_range.labels(feature).inc(n)


# Adaptive batching of /predict, tuned with benchmarks/serving.py (see its settings line).
BATCHING = {"max_batch_size": 512, "max_latency_ms": 5000}
BatchRecords = Annotated[list[dict[str, Any]], AfterValidator(_validate_batch_input)]


@bentoml.service(name="flywheel-serving", workers=1, threads=4, traffic={"timeout": 60})
class FlywheelServing:
    """Serves the champion (or a pinned version) of one model from the registry."""

    def __init__(self) -> None:
        global _service
        _configure_logging()
        settings = load_settings()
        version = os.environ.get("MODEL_VERSION", CHAMPION) or CHAMPION
        poll = settings.serving_poll_seconds
        prefer_onnx = settings.serving_runtime != "sklearn"
        log_predictions = settings.prediction_log  # off: benchmarks only
        self.settings = settings
        self.model_name = settings.model
        self.holder = ModelHolder(Registry(open_store(settings.store, settings), settings.model), version, poll,
                                  prefer_onnx=prefer_onnx, listener=_on_model_event)
        # the log writer fails fast (few botocore retries) and keeps its own retry-then-spill
        log_store = open_store(settings.store, settings.model_copy(update={"s3_max_attempts": 2}))
        self.predictions_log = _record_log(log_store, settings, "predictions") if log_predictions else _NoLog()
        self.feedback_log = _record_log(log_store, settings, "feedback")
        self.holder.start()
        self.predictions_log.start()
        self.feedback_log.start()
        _service = self

    def __is_ready__(self) -> bool:
        return self.holder.ready

    @bentoml.api(batchable=True, **BATCHING)
    def predict(self, records: BatchRecords) -> list[dict[str, Any]]:
        """Predict a few records per request; concurrent requests are batched into one model call."""
        items: list[_Validated] = records  # type: ignore[assignment]
        out: list[dict[str, Any]] = [{}] * len(items)
        groups: dict[int, list[int]] = {}
        for i, it in enumerate(items):  # one group unless a swap happened mid-batch
            groups.setdefault(id(it.model), []).append(i)
        for idx in groups.values():
            model = items[idx[0]].model
            frame = model.validator.frame_of([items[i].record for i in idx])
            ids, values, proba = self._score(model, frame)
            answers = _answers(model, ids, values, proba)
            for i, answer in zip(idx, answers, strict=True):
                out[i] = answer
        return out

    @bentoml.api
    def predict_many(self, records: Annotated[list[dict[str, Any]], Field(min_length=1)]) -> dict[str, Any]:
        """Predict many records in one request; the answer is columnar (one list per output)."""
        model = _require_model()
        try:
            rows = model.validator.validate(records)
        except InvalidInput as exc:
            raise exc.as_validation_error() from None
        _count_drift(rows)
        ids, values, proba = self._score(model, rows.frame)
        body: dict[str, Any] = {"model_version": model.version, "runtime": model.runtime_name,
                                "request_ids": ids, "predictions": values.tolist()}
        if proba is not None:
            body["classes"] = [_jsonable(c) for c in model.classes]
            body["probabilities"] = np.round(proba, 6).tolist()
        return body

    @bentoml.api
    def feedback(self, request_id: Annotated[str, Field(min_length=1, max_length=128)], label: Any) -> dict[str, Any]:
        """Record the true label of a served prediction (joined by request id in monitoring)."""
        model = _require_model()
        value = _check_label(model, label)
        now = pd.Timestamp.now(tz="UTC")
        self.feedback_log.append(pd.DataFrame({REQUEST_ID: [request_id], TIME: [now], LABEL: [value]}))
        metrics().feedback.inc()
        return {"request_id": request_id, "accepted": True}

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Flush every buffered record before the process exits (SIGTERM included)."""
        self.holder.stop()
        for record_log in (self.predictions_log, self.feedback_log):
            record_log.close()
        log.info("logs flushed: %d predictions and %d feedback records written, %d and %d spilled",
                 self.predictions_log.logged, self.feedback_log.logged,
                 self.predictions_log.spilled, self.feedback_log.spilled)

    def _score(self, model: LoadedModel, frame: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray | None]:
        """Predict, log and count a frame of validated rows."""
        pred = model.predict(frame)
        base = uuid.uuid4().hex[:20]  # one random draw per call; 32 hex digits per record
        ids = [f"{base}{i:012x}" for i in range(len(frame))]
        record = frame.reset_index(drop=True)
        record.insert(0, MODEL_VERSION, model.version)
        record.insert(0, TIME, pd.Timestamp.now(tz="UTC"))
        record.insert(0, REQUEST_ID, ids)
        record[PREDICTION] = pred.values
        if pred.proba is not None:
            record[PROBA] = pred.proba.max(axis=1)
        self.predictions_log.append(record)
        _count_predictions(model, pred.values)
        return ids, pred.values, pred.proba


FlywheelServing.add_asgi_middleware(HttpMiddleware)


class _NoLog:
    """Stands in for the prediction log when it is switched off (to measure its cost)."""

    logged = spilled = 0

    def append(self, records: pd.DataFrame) -> None:
        pass

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


def _configure_logging() -> None:
    root = logging.getLogger("flywheel")
    root.setLevel(logging.INFO)
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] [%(name)s] %(message)s"))
        root.addHandler(handler)
        root.propagate = False


def _record_log(store: Any, settings: Settings, kind: str) -> RecordLog:
    return RecordLog(store, settings.model, kind, settings.spill_dir, settings.log_flush_rows,
                     settings.log_flush_seconds,
                     on_outcome=lambda outcome, n: metrics().log_records.labels(outcome).inc(n)
                     if kind == "predictions" else None)


_serving_info: list[tuple[str, str]] = []


def _on_model_event(event: str, version: str, runtime: str, detail: str) -> None:
    m = metrics()
    if event == "swapped":
        for old in _serving_info:
            m.model_info.labels(*old).set(0)
        _serving_info[:] = [(version, runtime)]
        m.model_info.labels(version, runtime).set(1)
    m.swaps.labels(event).inc()


def _answers(model: LoadedModel, ids: list[str], values: np.ndarray, proba: np.ndarray | None) -> list[dict[str, Any]]:
    vals = values.tolist()
    base = {"model_version": model.version, "runtime": model.runtime_name}
    if proba is None:
        return [{"request_id": i, "prediction": v, **base} for i, v in zip(ids, vals, strict=True)]
    classes = [str(c) for c in model.classes]
    rounded = np.round(proba, 6).tolist()
    return [{"request_id": i, "prediction": v, "probabilities": dict(zip(classes, p, strict=True)), **base}
            for i, v, p in zip(ids, vals, rounded, strict=True)]


def _count_predictions(model: LoadedModel, values: np.ndarray) -> None:
    m = metrics()
    m.batch_size.observe(len(values))
    if model.schema.task == "classification":
        labels, counts = np.unique(values.astype(str), return_counts=True)
        for label, n in zip(labels, counts, strict=True):
            m.predictions.labels(label).inc(int(n))
    else:
        m.predictions.labels("value").inc(len(values))
        for v in values[:: max(1, len(values) // 256)]:  # a sample keeps a 10k-row call cheap
            m.prediction_value.observe(float(v))


def _check_label(model: LoadedModel, label: Any) -> Any:
    if model.schema.task == "classification":
        for c in model.classes or []:
            if str(c) == str(label) and not isinstance(label, (dict, list)):
                return _jsonable(c)
        raise InvalidInput([_label_problem(f"must be one of the model's classes {[_jsonable(c) for c in model.classes or []]}, got {label!r}")]).as_validation_error(prefix=())
    if isinstance(label, bool) or not isinstance(label, (int, float)) or not np.isfinite(label):
        raise InvalidInput([_label_problem(f"must be a finite number, got {label!r}")]).as_validation_error(prefix=())
    return float(label)


def _label_problem(text: str) -> Problem:
    return Problem(None, "label", text)


def _jsonable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v
