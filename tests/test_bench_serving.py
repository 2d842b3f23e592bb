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


def test_c1_runs_are_taken_in_turns_and_each_server_shows_its_median_run(monkeypatch) -> None:
    calls: list[tuple[str, float]] = []
    p50s = iter([9.0, 7.0, 5.0, 6.0, 8.0, 4.0])  # service, fastapi, service, fastapi, service, fastapi

    def fake_wrk(url: str, bodies_file, script, seconds: float, concurrency: int) -> dict:
        assert concurrency == 1
        calls.append((url, seconds))
        return {"p50_ms": next(p50s) if seconds == 10 else 99.0, "rps": 1.0}

    monkeypatch.setattr(serving, "wrk", fake_wrk)
    servers = {"service": serving.Running(None, "http://svc", None), "fastapi": serving.Running(None, "http://fa", None)}
    out = serving._measure_c1_interleaved(servers, Path("b"), Path("s"), 10, 2, 3)
    assert [u for u, s in calls if s == 2] == ["http://svc/predict", "http://fa/predict"]  # one warm-up each, first
    assert [u for u, s in calls if s == 10] == ["http://svc/predict", "http://fa/predict"] * 3  # in turns
    assert out["service"]["p50_ms"] == 8.0 and out["service"]["p50_runs_ms"] == [9.0, 5.0, 8.0]
    assert out["fastapi"]["p50_ms"] == 6.0 and out["fastapi"]["p50_runs_ms"] == [7.0, 6.0, 4.0]
