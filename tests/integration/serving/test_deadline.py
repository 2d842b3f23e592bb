"""The request deadline that stands in for BentoML's TimeoutMiddleware (services/serving/deadline.py).

That BentoML builds it, and the switch that leaves BentoML's own: tests/integration/test_compat.py and tests/integration/test_import_effects.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from services.serving.deadline import RequestDeadline


def _call(app: Any, timeout: float) -> tuple[list[dict[str, Any]], list[asyncio.TimerHandle]]:
    """Run one HTTP request through the deadline; the messages sent and every timer it armed.

    The event loop runs one more step after the middleware returns (a cancelled task's
    CancelledError is delivered then), and no longer.
    """
    sent: list[dict[str, Any]] = []
    timers: list[asyncio.TimerHandle] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        call_at = loop.call_at

        def recording_call_at(*args: Any, **kw: Any) -> asyncio.TimerHandle:
            handle = call_at(*args, **kw)
            timers.append(handle)
            return handle

        loop.call_at = recording_call_at  # type: ignore[method-assign]

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await RequestDeadline(app, timeout)({"type": "http", "path": "/predict"}, receive, send)
        await asyncio.sleep(0)
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            if not task.done():
                raise AssertionError(f"the app still runs after the middleware returned: {task}")

    asyncio.run(run())
    return sent, timers


def _answering(delay_before: float, delay_between: float = 0.0) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(delay_before)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(delay_between)
        await send({"type": "http.response.body", "body": b"ok"})
    return app


def test_an_answer_in_time_passes_through_and_leaves_no_timer_armed() -> None:
    """BentoML's timer stayed armed for the whole timeout, and held each request's objects."""
    sent, timers = _call(_answering(0.0), timeout=60)
    assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"ok"
    assert timers and all(t.cancelled() for t in timers)


def test_no_answer_within_the_timeout_is_a_504_and_the_app_is_cancelled() -> None:
    cancelled = []

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    sent, _ = _call(slow, timeout=0.05)
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"]) == {"error": "Not able to process the request in 0.05 seconds"}
    assert cancelled == [True]


def test_an_answer_that_has_started_is_not_cut_off() -> None:
    sent, timers = _call(_answering(0.0, delay_between=0.2), timeout=0.05)
    assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"ok"
    assert all(t.cancelled() for t in timers)


def test_the_apps_own_timeout_error_is_not_taken_for_the_deadline() -> None:
    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise TimeoutError("the store did not answer")

    try:
        _call(failing, timeout=60)
    except TimeoutError as exc:
        assert "store" in str(exc)
    else:
        raise AssertionError("the app's TimeoutError was swallowed")


def test_with_the_fix_switched_off_the_service_serves_with_bentomls_own_timeout(serving_store, tmp_path, start_server) -> None:
    """FLYWHEEL_SERVING_DEADLINE_FIX=false, what an upgraded BentoML would be run with: a real server answers."""
    import httpx

    from components.model_runtime import records_of
    from testkit.models import wine_frame
    from testkit.server import serving_settings

    server = start_server(serving_settings(serving_store, "wine", tmp_path), FLYWHEEL_SERVING_DEADLINE_FIX="false")
    records = records_of(wine_frame().drop(columns="target").head(1))
    answer = httpx.post(f"{server.url}/predict", json={"records": records}, timeout=30)
    assert answer.status_code == 200 and len(answer.json()) == 1 and "prediction" in answer.json()[0]
    assert "serving_deadline_fix is false: BentoML's own timeout middleware" in server.log_text()
