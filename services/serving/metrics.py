"""Prometheus metrics of the serving process, and the ASGI middleware that feeds the HTTP ones.

prometheus_client is imported only when the metrics are first built, inside the worker:
BentoML sets PROMETHEUS_MULTIPROC_DIR after the service module is imported, and the client
picks its storage (per-process files, summed by BentoML's /metrics) at import time.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

MAX_BODY_BYTES = 32 << 20
API_PATHS = {"/predict": "predict", "/predict_many": "predict_many", "/feedback": "feedback"}
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)


@dataclass(frozen=True)
class Metrics:
    request_duration: Any
    requests: Any
    batch_size: Any
    model_info: Any
    predictions: Any
    prediction_value: Any
    log_records: Any
    log_lag: Any
    spill_errors: Any
    swaps: Any
    unknown_categories: Any
    out_of_range: Any
    null_values: Any
    ignored_fields: Any
    rejected_records: Any
    feedback: Any


_metrics: Metrics | None = None
_lock = threading.Lock()


def metrics() -> Metrics:
    """The process's metrics, created on first use."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = _build()
    return _metrics


SWAP_OUTCOMES = ("swapped", "refused")


def _build() -> Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    built = Metrics(
        request_duration=Histogram("flywheel_request_duration_seconds", "Request latency by API and status.",
                                   ["api", "status"], buckets=_LATENCY_BUCKETS),
        requests=Counter("flywheel_requests_total", "Requests by API and status.", ["api", "status"]),
        batch_size=Histogram("flywheel_batch_size", "Rows per model call (after batching across requests).",
                             buckets=_BATCH_BUCKETS),
        model_info=Gauge("flywheel_model_info", "The served model version and runtime (1 = serving).",
                         ["version", "runtime"], multiprocess_mode="livemax"),
        predictions=Counter("flywheel_predictions_total", "Served predictions by class (regressors: class=value).",
                            ["class"]),
        prediction_value=Histogram("flywheel_prediction_value", "Distribution of regression predictions.",
                                   buckets=(-1e6, -1e3, -100, -10, -1, 0, 1, 10, 100, 1e3, 1e4, 1e6)),
        log_records=Counter("flywheel_prediction_log_records_total",
                            "Prediction log records by outcome: buffered (appended), flushed (stored at the first "
                            "try), spilled (waited on disk for the store), resent (stored from the spill, by whichever "
                            "worker), quarantined (not serialisable, kept aside as JSON), dropped (lost), refused "
                            "(no room in the log: the request got 503). Summed over a pod's workers, buffered = "
                            "flushed + resent + quarantined + dropped, and spilled = resent once the spill is sent.",
                            ["outcome"]),
        log_lag=Gauge("flywheel_prediction_log_lag_seconds",
                      "Age of the oldest prediction record not yet in the store.", multiprocess_mode="livemax"),
        spill_errors=Counter("flywheel_prediction_log_spill_errors_total",
                             "Writes the spill directory refused (full, over spill_max_mb, or unwritable)."),
        swaps=Counter("flywheel_model_swaps_total", "Model swaps by outcome: swapped, or refused (the old version keeps serving).",
                      ["outcome"]),
        unknown_categories=Counter("flywheel_unknown_categories_total",
                                   "Values of categorical features not seen in training (drift, not errors).",
                                   ["feature"]),
        out_of_range=Counter("flywheel_out_of_range_total",
                             "Numeric values outside the training range (drift, not errors).", ["feature"]),
        null_values=Counter("flywheel_null_values_total",
                            "Null feature values served (imputed by the model; drift, not errors).", ["feature"]),
        ignored_fields=Counter("flywheel_ignored_fields_total",
                               "Records carrying a field the model does not use (ignored, not refused).", ["field"]),
        rejected_records=Counter("flywheel_rejected_records_total",
                                 "Records refused by validation, by the field that refused them.", ["field"]),
        feedback=Counter("flywheel_feedback_total",
                         "Label feedback by outcome: accepted, unknown_request (not a request id this service "
                         "issues), rejected (a label the model cannot have).", ["outcome"]),
    )
    for outcome in SWAP_OUTCOMES:  # present from the start, so rate() and alerts see a zero, not nothing
        built.swaps.labels(outcome)
    return built


class HttpMiddleware:
    """Request latency and counts per API and status; refuses oversized bodies with 413.

    The label is ``api``, not ``endpoint``: the Prometheus Operator sets its own ``endpoint``
    target label on every scraped series, and a clash would rename ours to ``exported_endpoint``.
    """

    def __init__(self, app: Any, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") not in API_PATHS:
            await self.app(scope, receive, send)
            return
        api = API_PATHS[scope["path"]]
        start = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            too_big = self._declared_too_big(scope)
            if too_big is None:  # no Content-Length: read up to the limit, then replay
                receive, too_big = await self._buffered(receive)
            if too_big:
                await _json(send_status, 413, {
                    "error": f"request body is larger than the limit of {self.max_body_bytes} bytes; "
                             "send fewer records per request"})
            else:
                await self.app(scope, receive, send_status)
        finally:
            m = metrics()
            code = str(status["code"])
            m.requests.labels(api, code).inc()
            m.request_duration.labels(api, code).observe(time.perf_counter() - start)

    def _declared_too_big(self, scope: dict[str, Any]) -> bool | None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    return int(value) > self.max_body_bytes
                except ValueError:
                    return True
        return None

    async def _buffered(self, receive: Any) -> tuple[Any, bool]:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body_bytes:
                return receive, True
            chunks.append(body)
            more = message.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> dict[str, Any]:
            return replay.pop() if replay else await receive()

        return replayed, False


async def _json(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
