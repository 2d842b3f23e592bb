"""What answers before BentoML's API handlers: "not ready yet", and columnar bodies.

- While no model is loaded, the prediction and feedback endpoints answer 503 with a
  Retry-After header and one sentence, instead of raising through BentoML (which would
  write an ERROR traceback for every request a load balancer sends too early).
- ``POST /predict_many`` with an Arrow IPC stream or a Parquet body is read here, validated
  by the same columnar validator as JSON, scored, and answered in the same format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from components.formats import format_of

GATED = {"/predict", "/predict_many", "/feedback"}
NOT_READY = "no model is loaded yet; retry when /readyz answers 200"


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
            await _answer(send, 503, _json({"error": NOT_READY}), "application/json", {"retry-after": "1"})
            return
        fmt = format_of(_header(scope, b"content-type"))
        if path != "/predict_many" or scope.get("method") != "POST" or fmt in (None, "json"):
            await self.app(scope, receive, send)
            return
        body = await _read(receive)
        import anyio

        status, data, content_type, headers = await anyio.to_thread.run_sync(service.predict_table, model, body, fmt)
        await _answer(send, status, data, content_type, headers)


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
