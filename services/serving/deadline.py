"""The request deadline (BentoML's ``traffic.timeout``), with its timer cancelled when the answer starts.

BentoML's own ``TimeoutMiddleware`` arms a loop timer for every request and never cancels it,
so each request stays reachable for the whole timeout (60 s here): its future, its context and
its OpenTelemetry span. At 320 requests/s that is about 19,000 requests' objects, and the
garbage collector's full passes over them took 90 to 145 ms every few seconds: the service's
p99 at one client was 98 ms against FastAPI's 23 ms (benchmarks/serving.py, linear shape).

``install()`` puts ``RequestDeadline`` in its place, through the checked seam of
components/compat.py (the setting ``serving_deadline_fix`` turns it off); the serving worker's
entry point (services/serving/worker.py) calls it. The behaviour is BentoML's: a request
whose answer has not started within the timeout is cancelled and answered 504; once the
answer has started, it runs to its end.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

MESSAGE = "Not able to process the request in {seconds:g} seconds"


class RequestDeadline:
    """ASGI middleware: 504 when the app has not started its answer within ``timeout`` seconds.

    BentoML's code with the timer cancelled. The app runs in a task of its own, as there, so
    the event loop interleaves requests as before: the adaptive batcher forms its batches from
    what has queued while the previous batch ran on the same loop.
    """

    def __init__(self, app: Any, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        answering: asyncio.Future[None] = loop.create_future()

        async def _send(message: dict[str, Any]) -> None:
            if not answering.done():
                answering.set_result(None)
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, _send))
        task.add_done_callback(lambda _: answering.done() or answering.set_result(None))  # ended without answering
        timer = loop.call_later(self.timeout, _expire, answering)
        try:
            await answering
        except TimeoutError:
            if task.cancel():
                await _answer_timeout(send, self.timeout)
            return
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            timer.cancel()
        await task


def _expire(answering: asyncio.Future[None]) -> None:
    if not answering.done():
        answering.set_exception(TimeoutError())


async def _answer_timeout(send: Any, seconds: float) -> None:
    body = json.dumps({"error": MESSAGE.format(seconds=seconds)}).encode()
    await send({"type": "http.response.start", "status": 504,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def install(enabled: bool = True) -> bool:
    """Make BentoML build its timeout middleware from ``RequestDeadline`` (same arguments); False when switched off.

    Raises CompatError when the BentoML installed no longer builds it the way this relies on.
    """
    from components.compat import replace_bentoml_timeout

    return replace_bentoml_timeout(RequestDeadline, enabled)
