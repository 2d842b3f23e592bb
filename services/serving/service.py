"""The BentoML service: HTTP endpoints over the model holder, the validator and the logs.

    POST /predict        {"records": [{...}]}  a few records; batched across requests (batching.py: no window)
    POST /predict_many   {"records": [...]}     many records in one call (columnar answer), or an Arrow IPC
                                                stream / Parquet body answered in the same format (gate.py)
    POST /feedback       {"request_id": "...", "label": ...}
    GET  /healthz /readyz /metrics              (BentoML's; /readyz asks __is_ready__)

The logic lives in plain modules next to this one; this file only wires it to HTTP.
Configuration is read here, at the edge: the Settings object (the pinned version included: MODEL_VERSION).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import time
import uuid
from collections import Counter
from typing import Annotated, Any

import anyio
import bentoml
import numpy as np
import pandas as pd
from bentoml.exceptions import BentoMLException, NotFound, ServiceUnavailable
from bentoml.validators import ContentType
from pydantic import AfterValidator, Field, ValidationError

from components.data import LABEL, MODEL_VERSION, PREDICTION, REQUEST_ID, TIME
from components.deploy import FOLLOW_CHAMPION
from components.formats import CONTENT_TYPE, Format, read_frame, write_columns
from components.model_runtime import LoadedModel, prefers_onnx
from components.registry import Registry
from components.settings import Settings, load_settings
from components.store import open_store
from components.validation import Checked, InvalidInput, Problem
from services.serving import startup
from services.serving.batching import Batcher
from services.serving.gate import GATED, NOT_READY, Refusal, ServingGate, admitted_model
from services.serving.holder import ModelHolder
from services.serving.metrics import HttpMiddleware, metrics
from services.serving.prediction_log import HOLDER_STOP_SECONDS, OUTCOMES, Entry, LogFull, NoHooks, RecordLog

log = logging.getLogger("flywheel.serving")
PROBA = "_proba"
REQUEST_ID_FORMAT = re.compile(r"[0-9a-f]{32}")  # what _score issues: 20 random + 12 counter hex digits


class _Item:
    """One record of a /predict request after validation: scored in the batch, or refused with its problems."""

    __slots__ = ("checked", "model", "position", "refusal")

    def __init__(self, model: LoadedModel, checked: Checked, position: int, refusal: Refusal) -> None:
        self.model = model
        self.checked = checked
        self.position = position
        self.refusal = refusal  # its request's: the batch runs outside the request


def _validate_batch_input(records: list[Any]) -> list[_Item]:
    """Validation in request parsing, before batching: a request with nothing to score fails alone, with a 400.

    The model is the one the gate found loaded when it let this request through.
    """
    model = admitted_model()
    if model is None:  # the gate answers 503 before this; kept for a request that did not pass it
        raise ServiceUnavailable(NOT_READY)
    return _items(model, records)


def _items(model: LoadedModel, records: list[Any]) -> list[_Item]:
    checked = _checked(lambda: model.validator.validate_records(records), prefix=())
    refusal = Refusal.current()
    return [_Item(model, checked, i, refusal) for i in range(checked.total)]


def _checked(validate: Any, prefix: tuple[str, ...] = ("records",)) -> Checked:
    """Run a validation and count what it saw; a request with nothing to score becomes a 400."""
    try:
        checked = validate()
    except InvalidInput as exc:
        _count_rejected(exc.problems)
        raise exc.as_validation_error(prefix=prefix) from None
    _count_checked(checked)
    return checked


def _count_checked(checked: Checked) -> None:
    m = metrics()
    for feature, n in checked.unknown_categories.items():
        m.unknown_categories.labels(feature).inc(n)
    for feature, n in checked.out_of_range.items():
        m.out_of_range.labels(feature).inc(n)
    for feature, n in checked.nulls.items():
        m.null_values.labels(feature).inc(n)
    for name, n in checked.ignored.items():
        m.ignored_fields.labels(name).inc(n)
    _count_rejected(checked.problems)


def _count_rejected(problems: list[Problem]) -> None:
    m = metrics()
    seen: set[tuple[Any, Any]] = set()
    for p in problems:
        if (p.record, p.field) not in seen:  # a record counts once per field that refused it
            seen.add((p.record, p.field))
            m.rejected_records.labels(p.field or "record").inc()


# Records per model call at most (services/serving/batching.py: a batch takes what has queued)
MAX_BATCH_RECORDS = 512
BatchRecords = Annotated[list[Any], AfterValidator(_validate_batch_input)]
# The answer's media type, stated: else BentoML derives it from the answer's JSON schema, for every request.
Answers = Annotated[list[dict[str, Any]], ContentType("application/json")]


def request_telemetry(settings: Settings) -> dict[str, Any]:
    """BentoML service options for its per-request access log and tracing of the API routes, from the settings.

    Both are BentoML's middleware around every request. Measured on /predict at 32 clients (a
    one-record linear model, 2 workers): with both off the service answered about twice the
    requests per second it answered with both on. A user's own BentoML options still win
    (BENTOML_CONFIG_OPTIONS overrides a service's options).
    """
    options: dict[str, Any] = {}
    if not settings.serving_access_log:
        options["logging"] = {"access": {"enabled": False}}
    if not settings.serving_tracing:
        # OpenTelemetry's ASGI middleware passes an excluded URL straight through (regular expressions)
        options["tracing"] = {"excluded_urls": [f"{re.escape(route)}$" for route in sorted(GATED)]}
    return options


@bentoml.service(name="flywheel-serving", workers=1, threads=4, traffic={"timeout": 60})
class FlywheelServing:
    """Serves the champion (or a pinned version) of one model from the registry."""

    def __init__(self) -> None:
        _configure_logging()
        # a worker that cannot start stops the whole server, naming why (startup.py); the file's
        # name is the launcher's channel to its own workers, not a user's setting
        with startup.reported(os.environ.get(startup.FAILURE_FILE)):
            self._start()

    def _start(self) -> None:
        settings = load_settings()
        version = settings.serving_model_version or FOLLOW_CHAMPION
        poll = settings.serving_poll_seconds
        prefer_onnx = prefers_onnx(settings)
        log_predictions = settings.prediction_log  # off: benchmarks only
        self.settings = settings
        self.model_name = settings.model
        # one botocore attempt with short timeouts: a refused part waits in the spill directory,
        # and a write is bounded, which bounds the shutdown path (close_path_seconds). Opened
        # first, it is also the start-up check: an unreachable store fails the worker at once,
        # not after the registry client's retries.
        log_store = open_store(settings.store, settings.model_copy(update={
            "s3_max_attempts": 1, "s3_connect_timeout_seconds": settings.log_write_timeout_seconds,
            "s3_read_timeout_seconds": settings.log_write_timeout_seconds}))
        self.holder = ModelHolder(Registry(open_store(settings.store, settings), settings.model), version, poll,
                                  prefer_onnx=prefer_onnx, listener=_on_model_event,
                                  strict_fields=settings.serving_strict_fields)
        self.predictions_log = _record_log(log_store, settings, "predictions") if log_predictions else _NoLog()
        self.batcher: Batcher[_Item, dict[str, Any]] = Batcher(self._predict_batch, MAX_BATCH_RECORDS)
        self.feedback_log = _record_log(log_store, settings, "feedback")
        # what exists now (imports, settings) lives as long as the worker: left out of the
        # collector's full passes, which took about 100 ms each over it (p99 at one client)
        gc.collect()
        gc.freeze()
        self.holder.start()
        self.predictions_log.start()
        self.feedback_log.start()

    def __is_ready__(self) -> bool:
        return self.holder.ready

    def _model(self) -> LoadedModel:
        model = self.holder.current
        if model is None:  # the gate answers 503 before this; kept for a call that did not pass it
            raise ServiceUnavailable(NOT_READY)
        return model

    @bentoml.api
    async def predict(self, records: BatchRecords) -> Answers:
        """Predict a few records per request; concurrent requests are batched into one model call.

        A refused record gets its problems in its slot; the others are scored.
        """
        if records and not isinstance(records[0], _Item):
            # called in process (BentoML's testing guide): no request parsing ran, so validate here as one request
            records = _items(self._model(), records)
        return await self.batcher.submit(records)

    async def _predict_batch(self, items: list[_Item]) -> list[dict[str, Any]]:
        """The answers to the records of a batch of /predict requests (services/serving/batching.py)."""
        # async: the batch runs on the worker's event loop, as a one-CPU worker should; a thread
        # hand-off per batch cost about 2 ms of p50 with one client (benchmarks/serving.py)
        out: list[dict[str, Any]] = [{}] * len(items)
        slot: dict[tuple[int, int], int] = {(id(it.checked), it.position): i for i, it in enumerate(items)}
        groups: dict[int, list[Checked]] = {}
        models: dict[int, LoadedModel] = {}
        refusals: dict[int, Refusal] = {}
        for it in items:  # one model unless a swap happened mid-batch; one Checked per request
            checks = groups.setdefault(id(it.model), [])
            models[id(it.model)] = it.model
            refusals[id(it.checked)] = it.refusal
            if not checks or checks[-1] is not it.checked:
                checks.append(it.checked)
        for key, checks in groups.items():
            model = models[key]
            scored = [c for c in checks if len(c)]
            if scored:
                ids, values, proba, entry = self._score(model, _joined(scored), _passthrough(scored))
                refused = await self._log_batch(entry)
                if refused is None:
                    _count_predictions(model, values)
                    answers = _answers(model, ids, values, proba)
                    k = 0
                    for c in scored:
                        extra = {"ignored_fields": sorted(c.ignored)} if c.ignored else {}
                        for pos in c.index.tolist():
                            out[slot[(id(c), pos)]] = {**answers[k], **extra}
                            k += 1
                else:  # nothing of theirs is logged: the gate answers their requests 503
                    for c in scored:
                        refusals[id(c)].reason = refused
            for c in checks:
                for pos, problems in c.by_record().items():
                    out[slot[(id(c), pos)]] = _refusal(model, problems)
        return out

    @bentoml.api
    def predict_many(self, records: Annotated[list[Any], Field(min_length=1)], ctx: bentoml.Context) -> dict[str, Any]:
        """Predict many records in one request; the answer is columnar (one list per output).

        JSON here; Arrow IPC stream and Parquet bodies are read by the gate and answered in kind.
        """
        model = self._model()
        checked = _checked(lambda: model.validator.validate_records(records))
        try:
            body, headers = self.score_checked(model, checked)
        except LogFull as exc:
            Refusal.current().reason = str(exc)  # the gate answers 503 instead
            return {}
        ctx.response.headers.update(headers)
        return _json_answer(model, checked, body)

    def predict_table(self, model: LoadedModel, body: bytes, fmt: Format) -> tuple[int, bytes, str, dict[str, str]]:
        """Score an Arrow or Parquet body: (status, body, content type, headers); bad input is a 400 in JSON."""
        try:
            frame = read_frame(body, fmt)
        except InvalidInput as exc:
            return 400, json.dumps({"error": str(exc)}).encode(), "application/json", {}
        try:
            checked = _checked(lambda: model.validator.validate_frame(frame))
        except ValidationError as exc:
            return 400, json.dumps({"error": f"{exc.error_count()} validation errors: no record can be scored",
                                    "detail": exc.errors(include_context=False, include_input=False, include_url=False)},
                                   default=str).encode(), "application/json", {}
        try:
            out, headers = self.score_checked(model, checked)
        except LogFull as exc:
            Refusal.current().reason = str(exc)  # the gate answers 503 instead
            return 503, b"", "application/json", {}
        errors: np.ndarray | None = None
        if checked.rejected:
            errors = np.full(checked.total, None, dtype=object)
            for pos, problems in checked.by_record().items():
                errors[pos] = "; ".join(str(Problem(None, p.field, p.problem)) for p in problems)
        return 200, write_columns(out, errors, fmt), CONTENT_TYPE[fmt], headers

    def score_checked(self, model: LoadedModel, checked: Checked) -> tuple[dict[str, Any], dict[str, str]]:
        """Score and log the valid records of a request: outputs in record order (None where refused), and headers.

        Raises ``LogFull`` when the prediction log has no room for them within its wait.
        """
        ids, values, proba, entry = self._score(model, checked.columns, checked.passthrough)
        if entry is not None:
            self.predictions_log.put(entry)
        _count_predictions(model, values)
        n, index = checked.total, checked.index
        full = checked.rejected == 0
        out: dict[str, Any] = {"request_id": ids, "prediction": values}
        if proba is not None:
            for j, c in enumerate(model.classes or []):
                out[f"probability_{c}"] = proba[:, j]
        if not full:
            for k, v in out.items():
                spread = np.full(n, None, dtype=object)
                spread[index] = v if not isinstance(v, pd.Series) else v.to_numpy(dtype=object)
                out[k] = spread
        headers = {"X-Flywheel-Model-Version": model.version, "X-Flywheel-Rejected-Records": str(checked.rejected)}
        if checked.ignored:
            headers["X-Flywheel-Ignored-Fields"] = ",".join(sorted(checked.ignored))
        return out, headers

    @bentoml.api
    def feedback(self, request_id: Annotated[str, Field(min_length=1, max_length=128)], label: Any) -> dict[str, Any]:
        """Record the true label of a served prediction (joined by request id in monitoring)."""
        model = self._model()
        counter = metrics().feedback
        if not REQUEST_ID_FORMAT.fullmatch(request_id):
            counter.labels("unknown_request").inc()
            raise NotFound(f"request_id {request_id!r} is not one this service issued: "
                           "its request ids are 32 lowercase hexadecimal digits")
        try:
            value = _check_label(model, label)
        except ValidationError:
            counter.labels("rejected").inc()
            raise
        now = pd.Timestamp.now(tz="UTC")
        try:
            self.feedback_log.append(pd.DataFrame({REQUEST_ID: [request_id], TIME: [now], LABEL: [value]}))
        except LogFull as exc:
            Refusal.current().reason = str(exc)  # the gate answers 503 instead
            return {}
        counter.labels("accepted").inc()
        return {"request_id": request_id, "accepted": True}

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Flush every buffered record before the process exits (SIGTERM included).

        Bounded: both logs share one deadline of ``log_close_seconds``; what the store has not
        taken by then stays in the spill directory (the chart's grace period covers this path).
        """
        self.holder.stop(timeout=HOLDER_STOP_SECONDS)
        deadline = time.monotonic() + self.settings.log_close_seconds
        for record_log in (self.predictions_log, self.feedback_log):
            record_log.close(max(0.0, deadline - time.monotonic()))
        log.info("logs flushed: %d predictions and %d feedback records written, %d and %d spilled",
                 self.predictions_log.logged, self.feedback_log.logged,
                 self.predictions_log.spilled, self.feedback_log.spilled)

    def _score(self, model: LoadedModel, features: dict[str, np.ndarray], passthrough: pd.DataFrame | None = None
               ) -> tuple[pd.Series, np.ndarray, np.ndarray | None, Entry | None]:
        """Predict validated rows (``Checked.columns``); with the prediction log's entry for them (id / timestamp columns sent too).

        The entry is None when the log is off. The caller queues it, and counts the predictions once it is queued.
        """
        pred = model.predict(features)
        n = len(pred.values)
        id_array = request_id_array(n)
        ids = pd.Series(pd.arrays.ArrowExtensionArray(id_array))
        if isinstance(self.predictions_log, _NoLog):
            return ids, pred.values, pred.proba, None
        columns = log_columns(model.version, id_array, features, passthrough, pred.values, pred.proba)
        return ids, pred.values, pred.proba, self.predictions_log.encode(columns, model.log_types)

    async def _log_batch(self, entry: Entry | None) -> str | None:
        """Queue a /predict batch's log entry; None once queued, else why it was refused.

        At once when the log has room; else the wait for room runs in a thread, off the event loop.
        """
        if entry is None or self.predictions_log.offer(entry):
            return None
        try:
            await anyio.to_thread.run_sync(self.predictions_log.put, entry)
        except LogFull as exc:
            return str(exc)
        return None


def log_columns(version: str, ids: Any, features: dict[str, np.ndarray], passthrough: pd.DataFrame | None,
                values: np.ndarray, proba: np.ndarray | None) -> dict[str, Any]:
    """The prediction log's columns for scored records (ids: ``request_id_array``), before ``RecordLog.encode``.

    The columns as they are (no frame built, no copy): the log converts them to Arrow once.
    """
    n = len(values)
    columns: dict[str, Any] = {REQUEST_ID: ids, TIME: _now_repeated(n), MODEL_VERSION: repeated_text(version, n)}
    if passthrough is not None:
        columns.update({c: passthrough[c].to_numpy() for c in passthrough.columns})
    columns.update(features)
    columns[PREDICTION] = values
    if proba is not None:
        columns[PROBA] = proba.max(axis=1)
    return columns


def request_ids(n: int) -> pd.Series:
    """One id per record: 20 random hex digits per call, then the record's number (32 hex digits in all)."""
    return pd.Series(pd.arrays.ArrowExtensionArray(request_id_array(n)))


def request_id_array(n: int) -> Any:
    """``request_ids`` as an Arrow string array.

    For large calls the bytes are written with numpy and wrapped as Arrow buffers: the 20-digit
    prefix, then each record's number as 12 decimal digits, copied from a table made once. No
    Python string per record, and no Arrow compute kernels (casting and padding 100k numbers
    cost about 5 ms).
    """
    import pyarrow as pa

    base = uuid.uuid4().hex[:20]
    if n <= _SMALL_CALL:
        return pa.array([f"{base}{i:012d}" for i in range(n)], pa.string())
    data = np.empty((n, 32), dtype=np.uint8)
    data[:, :20] = np.frombuffer(base.encode(), dtype=np.uint8)
    data[:, 20:] = _numbers_as_digits(n)
    return _text_array(data, n, 32)


_digits = np.empty((0, 12), dtype=np.uint8)


def _numbers_as_digits(n: int) -> np.ndarray:
    """Rows 0..n-1 of the table: row i is i as 12 decimal digits (ASCII); grown when a larger call comes."""
    global _digits
    table = _digits
    if len(table) < n:
        size = max(n, 2 * len(table))
        table = np.full((size, 12), ord("0"), dtype=np.uint8)
        ten = np.arange(ord("0"), ord("9") + 1, dtype=np.uint8)
        for k in range(len(str(size - 1))):  # digit k of i is (i // 10**k) % 10: each digit repeated 10**k times, cycling
            table[:, 11 - k] = np.resize(np.repeat(ten, 10**k), size)
        _digits = table  # one assignment: a concurrent call sees the old table or the new one
    return table[:n]


def _now_repeated(n: int) -> Any:
    """The time now (UTC, in ns), n times, as an Arrow array: the log's type, so no pandas index and no cast."""
    import pyarrow as pa

    return pa.array(np.full(n, time.time_ns(), dtype=np.int64), pa.int64()).view(pa.timestamp("ns", tz="UTC"))


def repeated_text(value: str, n: int) -> Any:
    """``value`` n times, as an Arrow string array (for a log column that is the same on every record)."""
    import pyarrow as pa

    raw = value.encode()
    if n <= _SMALL_CALL or not raw:
        return pa.array([value] * n, pa.string())
    return _text_array(np.frombuffer(raw * n, dtype=np.uint8), n, len(raw))


def _text_array(data: np.ndarray, n: int, width: int) -> Any:
    """An Arrow string array over ``data``: n values of ``width`` bytes each, back to back (not copied)."""
    import pyarrow as pa

    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


_SMALL_CALL = 1024  # records: up to here plain Python beats the per-call overheads of Arrow and pandas


def _joined(checks: list[Checked]) -> dict[str, np.ndarray]:
    """The model's input columns of several requests, one after the other."""
    if len(checks) == 1:
        return checks[0].columns
    return {name: np.concatenate([c.columns[name] for c in checks]) for name in checks[0].columns}


def _passthrough(checks: list[Checked]) -> pd.DataFrame | None:
    if all(c.passthrough is None for c in checks):
        return None
    frames = [c.passthrough if c.passthrough is not None else pd.DataFrame(index=pd.RangeIndex(len(c))) for c in checks]
    return pd.concat(frames) if len(frames) > 1 else frames[0]


def _refusal(model: LoadedModel, problems: list[Problem]) -> dict[str, Any]:
    return {"error": "; ".join(str(Problem(None, p.field, p.problem)) for p in problems),
            "errors": [{"field": p.field, "problem": p.problem} for p in problems],
            "model_version": model.version, "runtime": model.runtime_name}


def _json_answer(model: LoadedModel, checked: Checked, out: dict[str, Any]) -> dict[str, Any]:
    ids = out["request_id"]
    body: dict[str, Any] = {"model_version": model.version, "runtime": model.runtime_name,
                            "request_ids": _plain(ids.to_numpy(dtype=object) if isinstance(ids, pd.Series) else ids),
                            "predictions": _plain(out["prediction"])}
    if model.schema.task == "classification" and any(k.startswith("probability_") for k in out):
        body["classes"] = [_jsonable(c) for c in model.classes or []]
        cols = [out[f"probability_{c}"] for c in model.classes or []]
        if checked.rejected == 0:
            body["probabilities"] = np.round(np.column_stack(cols), 6).tolist()
        else:
            body["probabilities"] = [None if row[0] is None else [round(float(x), 6) for x in row]
                                     for row in zip(*cols, strict=True)]
    body["errors"] = [p.to_dict() for p in checked.problems]
    body["rejected"] = checked.rejected
    body["ignored_fields"] = dict(sorted(checked.ignored.items()))
    return body


def _plain(values: Any) -> list[Any]:
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values.tolist()
    return [_jsonable(v) for v in values]


FlywheelServing.add_asgi_middleware(HttpMiddleware)
FlywheelServing.add_asgi_middleware(ServingGate, handler=lambda: _current_service())


def _current_service() -> FlywheelServing | None:
    """This worker's service instance, as BentoML records it once it has made it (None before)."""
    try:
        return bentoml.get_current_service()
    except BentoMLException:
        return None


class _NoLog:
    """Stands in for the prediction log when it is switched off (to measure its cost)."""

    logged = spilled = 0

    def start(self) -> None:
        pass

    def close(self, seconds: float = 0.0) -> None:
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
                     settings.log_flush_seconds, lease_seconds=settings.spill_lease_seconds,
                     spill_max_bytes=int(settings.spill_max_mb * 1e6), max_buffer_rows=settings.log_max_buffer_rows,
                     append_wait_seconds=settings.log_append_wait_seconds,
                     hooks=_PredictionLogMetrics() if kind == "predictions" else _SpillErrors())


class _PredictionLogMetrics:
    """The prediction log's outcomes, lag and spill errors as Prometheus metrics."""

    def __init__(self) -> None:
        for outcome in OUTCOMES:  # present from the start, so rate() and the sums see a zero, not nothing
            metrics().log_records.labels(outcome)

    def outcome(self, outcome: str, records: int) -> None:
        metrics().log_records.labels(outcome).inc(records)

    def spill_error(self) -> None:
        metrics().spill_errors.inc()

    def lag(self, seconds: float) -> None:
        metrics().log_lag.set(seconds)


class _SpillErrors(NoHooks):
    """The feedback log shares the spill directory: its refusals count too."""

    def spill_error(self) -> None:
        metrics().spill_errors.inc()


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
        # hashed; pandas for large calls, where it is cheaper than Python objects, a Counter for small ones
        counts = Counter(values.tolist()) if len(values) <= _SMALL_CALL else pd.Series(values).value_counts()
        for label, n in counts.items():
            m.predictions.labels(str(label)).inc(int(n))
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
