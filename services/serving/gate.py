"""What answers before BentoML's API handlers: "not ready yet", "not now", and columnar bodies.

- While no model is loaded, the prediction and feedback endpoints answer 503 with a
  Retry-After header and one sentence, instead of raising through BentoML (which would
  write an ERROR traceback for every request a load balancer sends too early).
- A request the service cannot take now (its record log found no room: back-pressure) is
  answered the same way: the service sets the request's ``Refusal`` and the gate sends 503
  in place of the handler's answer. The refusal reaches the batched ``/predict`` through
  the request's items, made while the request is parsed (``Refusal.current``).
- A ``/predict`` request is counted as on its way to the batcher (``Batcher.expect``) until it
  queues or leaves, so a batch that starts meanwhile lets it join rather than run without it.
- ``POST /predict_many`` with an Arrow IPC stream or a Parquet body is read here, validated
  by the same columnar validator as JSON, scored, and answered in the same format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from components.formats import format_of

GATED = {"/predict", "/predict_many", "/feedback"}
NOT_READY = "no model is loaded yet; retry when /readyz answers 200"
RETRY_AFTER = {"retry-after": "1"}


class Refusal:
    """One request's "not now": a reason set by the service makes the gate answer 503 with it."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: str | None = None

    @staticmethod
    def current() -> Refusal:
        """The refusal of the request being handled (a detached one when the service is called in-process)."""
        return _refusal.get() or Refusal()


_refusal: ContextVar[Refusal | None] = ContextVar("flywheel_refusal", default=None)
_admitted: ContextVar[Any] = ContextVar("flywheel_admitted_model", default=None)


def admitted_model() -> Any:
    """The model the gate found loaded when it let the request being handled through (None outside one).

    The batched ``/predict`` validates a request while BentoML parses it, before the service
    method runs: this is how that validation reaches the model without a module global.
    """
    return _admitted.get()


class ServingGate:
    """ASGI middleware in front of the service's API routes.

    ``handler()`` returns the service instance, or None before it exists; its ``predict_table``
    answers a columnar body.
    """

    def __init__(self, app: Any, handler: Callable[[], Any]) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in GATED:
            await self.app(scope, receive, send)
            return
        service = self.handler()
        model = service.holder.current if service is not None else None
        if model is None:
            await _answer(send, 503, _json({"error": NOT_READY}), "application/json", RETRY_AFTER)
            return
        refusal = Refusal()
        token = _refusal.set(refusal)
        admitted = _admitted.set(model)
        send = _refusing(send, refusal)
        try:
            fmt = format_of(_header(scope, b"content-type"))
            if path == "/predict":
                with service.batcher.expect():  # a batch starting meanwhile lets it join (batching.py)
                    await self.app(scope, receive, send)
                return
            if path != "/predict_many" or scope.get("method") != "POST" or fmt in (None, "json"):
                await self.app(scope, receive, send)
                return
            body = await _read(receive)
            import anyio

            status, data, content_type, headers = await anyio.to_thread.run_sync(service.predict_table, model, body, fmt)
            await _answer(send, status, data, content_type, headers)
        finally:
            _refusal.reset(token)
            _admitted.reset(admitted)


def _refusing(send: Any, refusal: Refusal) -> Any:
    """``send``, except that a refused request's answer becomes 503 with Retry-After and the reason."""
    replaced = False

    async def refusing_send(message: dict[str, Any]) -> None:
        nonlocal replaced
        if message["type"] == "http.response.start" and refusal.reason is not None:
            replaced = True
            await _answer(send, 503, _json({"error": refusal.reason}), "application/json", RETRY_AFTER)
        elif not replaced:  # the handler's own body is dropped after a refusal
            await send(message)

    return refusing_send


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _read(receive: Any) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


async def _answer(send: Any, status: int, data: bytes, content_type: str, headers: dict[str, str]) -> None:
    raw = [(b"content-type", content_type.encode()), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
