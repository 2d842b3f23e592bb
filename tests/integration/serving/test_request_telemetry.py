"""BentoML's access log and request tracing of the API routes follow the settings (both off by default).

Each is BentoML middleware around every request; off, a request passes through neither: no
access-log line names it and no trace id is given it (BentoML's ``X-BentoML-Request-ID`` header
is the span's id). Real servers on loopback, one with the defaults and one with both settings on.
"""

from __future__ import annotations

import re

import httpx

from components.model_runtime import records_of
from testkit.models import wine_frame
from testkit.server import serving_settings

# BentoML's access-log line for a request: "... (scheme=http,method=POST,path=/predict,...) (status=200,...)"
ACCESS_LINE = re.compile(r"method=POST,path=/predict\b")


def _predict_three(url: str) -> list[httpx.Response]:
    records = records_of(wine_frame().drop(columns="target").head(2))
    answers = [httpx.post(f"{url}/predict", json={"records": records}, timeout=30) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    return answers


def test_by_default_the_api_routes_skip_the_access_log_and_tracing(serving_store, tmp_path, start_server) -> None:
    server = start_server(serving_settings(serving_store, "wine", tmp_path))
    answers = _predict_three(server.url)
    server.stop()  # the log is complete once the server has exited
    assert not ACCESS_LINE.search(server.log_text())
    assert not any("x-bentoml-request-id" in a.headers for a in answers)


def test_the_settings_turn_the_access_log_and_tracing_on(serving_store, tmp_path, start_server) -> None:
    server = start_server(serving_settings(serving_store, "wine", tmp_path, serving_access_log=True, serving_tracing=True))
    answers = _predict_three(server.url)
    server.stop()
    assert len(ACCESS_LINE.findall(server.log_text())) == 3
    assert all(re.fullmatch(r"[0-9a-f]+", a.headers.get("x-bentoml-request-id", "")) for a in answers)
