"""The serving benchmark's generator: wrk with the JSON POST Lua script, and the ceiling check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import serving, serving_sides

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

# its tier (tests/conftest.py gives the tests under tests/ theirs by folder)
pytestmark = pytest.mark.integration


def _wrk_against_echo(tmp_path: Path, bodies_text: str, seconds: int) -> dict:
    """wrk with the bench's Lua script, one connection, posting ``bodies_text`` to the echo app."""
    script = tmp_path / "post.lua"
    script.write_text(serving.WRK_LUA)
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text(bodies_text)
    srv = serving_sides.start_uvicorn(tmp_path, "echo_app", ECHO_APP, 1, {})
    try:
        srv.wait_ready("/", probe=b'{"records": []}')
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
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "requests": int(rps * 10)}


def _figures(ceiling: float, service: float, logged: float, plain: float | None = None) -> dict:
    per_c = [str(c) for c in serving.CONCURRENCY]
    plain = logged if plain is None else plain
    return {"ceiling": {c: _cell(ceiling) for c in per_c},
            "shapes": {"linear": {"service": {c: _cell(service, 1.5, 1.8) for c in per_c},
                                  "fastapi_logged": {c: _cell(logged) for c in per_c},
                                  "fastapi_plain": {c: _cell(plain) for c in per_c}, "mismatches": []}}}


def test_a_ceiling_under_three_times_the_fastest_server_says_capped() -> None:
    capped = serving.ratios(_figures(ceiling=2000, service=1000, logged=500))
    assert capped["capped"] == ["1", "8", "32"]
    assert not capped["targets"]["generator not capped (ceiling >= 3x fastest server)"]
    fine = serving.ratios(_figures(ceiling=3000, service=1000, logged=500))
    assert fine["capped"] == [] and fine["ceiling_over_fastest"]["32"] == 3.0


def test_targets_are_the_issue_s_ratios_against_each_baseline() -> None:
    r = serving.ratios(_figures(ceiling=9000, service=1000, logged=500, plain=700))
    cell = r["cells"]["linear/c32"]
    assert cell["fastapi_logged"]["throughput"] == 2.0 and cell["fastapi_logged"]["p99"] == 0.9
    assert cell["fastapi_plain"]["throughput"] == pytest.approx(1000 / 700)
    assert r["targets"]["linear: c=32 throughput >= 1.5x fastapi_logged"]
    assert r["targets"]["linear: c=32 throughput >= 1.3x fastapi_plain"]
    assert r["targets"]["linear: c=1 p50 within 2 ms of fastapi_plain"]
    slow = serving.ratios(_figures(ceiling=9000, service=700, logged=500, plain=600))
    assert not slow["targets"]["linear: c=32 throughput >= 1.5x fastapi_logged"]  # 1.4x
    assert not slow["targets"]["linear: c=32 throughput >= 1.3x fastapi_plain"]  # 1.17x


def test_a_baseline_that_answered_nothing_gives_no_ratio_and_misses_its_target() -> None:
    r = serving.ratios(_figures(ceiling=9000, service=1000, logged=500, plain=0))
    assert r["cells"]["linear/c32"]["fastapi_plain"]["throughput"] is None
    assert not r["targets"]["linear: c=32 throughput >= 1.3x fastapi_plain"]


def test_unmatched_sides_fail_the_matched_target_and_say_what_differs() -> None:
    sides = {name: {"workers": 2, "runtime": "onnx", "env": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "MALLOC_TOP_PAD_": "33554432"}}
             for name in serving_sides.MODEL_SIDES}
    assert serving_sides.mismatches(sides) == []
    sides["fastapi_plain"] = {**sides["fastapi_plain"], "workers": 1}
    problems = serving_sides.mismatches(sides)
    assert problems == ["workers service=2 | fastapi_logged=2 | fastapi_plain=1"]
    figures = _figures(ceiling=9000, service=1000, logged=500)
    figures["shapes"]["linear"]["mismatches"] = problems
    assert not serving.ratios(figures)["targets"][
        "linear: sides matched (workers, runtime, thread caps, heap pad, read from the processes)"]
    assert serving.settings_line(sides, problems).startswith("UNMATCHED (workers service=2")
    assert "workers 2|2|1, runtime onnx|onnx|onnx" in serving.settings_line(sides, problems)


def test_c1_runs_are_taken_in_turns_and_each_server_shows_its_median_run(monkeypatch) -> None:
    calls: list[tuple[str, float]] = []
    p50s = iter([9.0, 7.0, 5.0, 6.0, 8.0, 4.0])  # service, fastapi, service, fastapi, service, fastapi

    def fake_wrk(url: str, bodies_file, script, seconds: float, concurrency: int) -> dict:
        assert concurrency == 1
        calls.append((url, seconds))
        return {"p50_ms": next(p50s) if seconds == 10 else 99.0, "rps": 1.0}

    monkeypatch.setattr(serving, "wrk", fake_wrk)
    servers = {"service": SimpleNamespace(url="http://svc"), "fastapi": SimpleNamespace(url="http://fa")}
    out = serving._measure_c1_interleaved(servers, Path("b"), Path("s"), 10, 2, 3)
    assert [u for u, s in calls if s == 2] == ["http://svc/predict", "http://fa/predict"]  # one warm-up each, first
    assert [u for u, s in calls if s == 10] == ["http://svc/predict", "http://fa/predict"] * 3  # in turns
    assert out["service"]["p50_ms"] == 8.0 and out["service"]["p50_runs_ms"] == [9.0, 5.0, 8.0]
    assert out["fastapi"]["p50_ms"] == 6.0 and out["fastapi"]["p50_runs_ms"] == [7.0, 6.0, 4.0]
