"""The serving benchmark's generator: wrk with the JSON POST Lua script, and the ceiling check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import serving

ECHO_APP = '''
import json
SEEN = []

async def app(scope, receive, send):
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    ok = scope["method"] == "POST" and dict(scope["headers"]).get(b"content-type") == b"application/json" \\
        and "records" in json.loads(body)
    answer = b"ok" if ok else b"bad"
    await send({"type": "http.response.start", "status": 200 if ok else 400,
                "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})
'''


def _wrk_against_echo(tmp_path: Path, bodies_text: str, seconds: int) -> dict:
    """wrk with the bench's Lua script, one connection, posting ``bodies_text`` to the echo app."""
    script = tmp_path / "post.lua"
    script.write_text(serving.WRK_LUA)
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text(bodies_text)
    srv = serving.start_uvicorn(tmp_path, "echo_app", ECHO_APP, [])
    try:
        srv.wait_ready("/", b'{"records": []}')
        return serving.wrk(srv.url + "/", bodies, script, 1, seconds)
    finally:
        srv.stop()


@pytest.mark.skipif(shutil.which("wrk") is None, reason=serving.INSTALL_HINT)
def test_wrk_posts_every_json_body_and_reports_percentiles(tmp_path: Path) -> None:
    figures = _wrk_against_echo(tmp_path, "\n".join(json.dumps({"records": [{"x": i}]}) for i in range(50)) + "\n", 2)
    assert figures["requests"] > 0 and figures["failures"] == 0  # the app answers 400 to anything but our JSON POST
    assert figures["rps"] > 0 and 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]


@pytest.mark.skipif(shutil.which("wrk") is None, reason=serving.INSTALL_HINT)
def test_wrk_counts_refused_requests_as_failures(tmp_path: Path) -> None:
    figures = _wrk_against_echo(tmp_path, '{"not_records": 1}\n', 1)
    assert figures["failures"] == figures["requests"] > 0 and figures["rps"] == 0


def _cell(rps: float, p50: float = 1.0, p99: float = 2.0) -> dict:
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99}


def _figures(ceiling: float, service: float, fastapi: float) -> dict:
    per_c = {str(c): None for c in serving.CONCURRENCY}
    return {"ceiling": {c: _cell(ceiling) for c in per_c},
            "shapes": {"linear": {"service": {c: _cell(service, 1.5, 1.8) for c in per_c},
                                  "fastapi": {c: _cell(fastapi) for c in per_c}}}}


def test_a_ceiling_under_three_times_the_fastest_server_says_capped() -> None:
    capped = serving.ratios(_figures(ceiling=2000, service=1000, fastapi=500))
    assert capped["capped"] == ["1", "8", "32"]
    assert not capped["targets"]["generator not capped (ceiling >= 3x fastest server)"]
    fine = serving.ratios(_figures(ceiling=3000, service=1000, fastapi=500))
    assert fine["capped"] == [] and fine["ceiling_over_fastest"]["32"] == 3.0


def test_targets_are_the_issue_s_ratios() -> None:
    r = serving.ratios(_figures(ceiling=9000, service=1000, fastapi=500))
    cell = r["cells"]["linear/c32"]
    assert cell["throughput_vs_fastapi"] == 2.0 and cell["p99_vs_fastapi"] == 0.9
    assert r["targets"]["linear: c=32 throughput >= 1.5x fastapi"]
    assert r["targets"]["linear: c=1 p50 within 2 ms of fastapi"]
    slow = serving.ratios(_figures(ceiling=9000, service=700, fastapi=500))
    assert not slow["targets"]["linear: c=32 throughput >= 1.5x fastapi"]
