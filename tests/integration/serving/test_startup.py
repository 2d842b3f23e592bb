"""`flywheel serve` (a container's PID 1) when a worker cannot start, and when all is well.

The real command in its own process group, two workers: a store that cannot be reached or
written at start-up ends it at once with exit code 1 and one sentence naming the store, not a
server that stays up with /healthz timing out until a startup probe kills it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from components.net import free_port
from services.serving.launch import wait_until_ok
from testkit.server import READY_TIMEOUT

FLYWHEEL = str(Path(sys.executable).parent / "flywheel")
# Well inside the chart's startup probe (24 x 5 s): the issue saw the server stay up until it.
# Most of it is the workers importing their libraries on this shared machine.
EXIT_WITHIN = 60


def _serve(tmp_path: Path, store: str, **env: str) -> tuple[subprocess.Popen, Path, int]:
    port = free_port()
    out = tmp_path / "serve.log"
    env = {**os.environ, "FLYWHEEL_SERVING_WORKERS": "2", "FLYWHEEL_SPILL_DIR": str(tmp_path / "spill"),
           "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True", **env}
    with open(out, "wb") as log:
        proc = subprocess.Popen([FLYWHEEL, "serve", "--store", store, "--model", "wine", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.PIPE, text=True, start_new_session=True)
    return proc, out, port


def _server_processes(tmp_path: Path) -> list[psutil.Process]:
    """The launcher, the arbiter and the workers of the server started in ``tmp_path`` (found by
    their BENTOML_HOME: circus starts each worker in a session of its own)."""
    home = str(tmp_path / "bentoml")
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("BENTOML_HOME") == home:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _ended(proc: subprocess.Popen, timeout: float, tmp_path: Path) -> tuple[str, float]:
    """stderr and the seconds the command took; a command still running after ``timeout`` fails the test."""
    started = time.monotonic()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(tmp_path)
        proc.communicate()
        pytest.fail(f"flywheel serve still running {timeout} s after it was started")
    return err, time.monotonic() - started


def _kill(tmp_path: Path) -> None:
    for p in _server_processes(tmp_path):
        with contextlib.suppress(psutil.Error):
            p.kill()


@pytest.mark.parametrize("case", ["unreachable S3 endpoint", "store directory that cannot be created"])
def test_a_store_that_cannot_be_used_at_start_up_ends_flywheel_serve_at_once(tmp_path: Path, case: str) -> None:
    if case == "unreachable S3 endpoint":
        endpoint = f"http://127.0.0.1:{free_port()}"  # bound and closed again: connections are refused
        store, env = "s3://flywheel-test/serving", {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
                                                    "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        sentence = f"store {store} is unreachable (endpoint {endpoint}): Could not connect to the endpoint URL"
    else:
        (tmp_path / "a-file").write_text("not a directory")
        store, env = str(tmp_path / "a-file" / "store"), {}
        sentence = f"store directory {tmp_path / 'a-file' / 'store'} cannot be created: Not a directory"

    proc, out, port = _serve(tmp_path, store, **env)
    err, took = _ended(proc, EXIT_WITHIN, tmp_path)

    assert proc.returncode == 1, (proc.returncode, err[-2000:])
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: the service cannot start: {sentence}"), err[-2000:]
    assert "Application startup failed" in out.read_text(), "the workers did fail their start-up"
    assert took < EXIT_WITHIN
    assert _server_processes(tmp_path) == [], "no worker or arbiter is left behind"


def test_a_server_that_started_runs_until_sigterm_and_exits_0(tmp_path: Path, serving_store: Path) -> None:
    """The supervising launcher changes nothing for a server whose workers started: it serves, and
    SIGTERM (the kubelet's stop) is passed on and ends it with the server's own exit code."""
    proc, _, port = _serve(tmp_path, str(serving_store))
    try:
        assert wait_until_ok(proc, f"http://127.0.0.1:{port}/readyz", READY_TIMEOUT, in_a_row=4) is None
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert len(_server_processes(tmp_path)) == 4, "the launcher, the arbiter and two workers"
    except BaseException:
        _kill(tmp_path)
        raise
    proc.send_signal(signal.SIGTERM)
    err, _ = _ended(proc, 60, tmp_path)
    assert proc.returncode == 0, err[-2000:]
    assert "cannot start" not in err
    assert _server_processes(tmp_path) == []


# A server whose worker sits in a session of its own (as circus starts BentoML's) and which exits
# on SIGTERM without stopping it: the worker's pid is printed first, then the server serves HTTP.
ORPHANING_SERVER = """
import http.server, os, signal, subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(worker.pid, flush=True)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def test_stopping_a_server_leaves_none_of_its_workers_running(tmp_path: Path) -> None:
    from services.serving.launch import ServerProcess

    port = free_port()
    server = ServerProcess([sys.executable, "-c", ORPHANING_SERVER, str(port)], dict(os.environ), port,
                           tmp_path / "server.log", cwd=tmp_path).start()
    server.wait_ready("/", 30)
    worker = psutil.Process(int(server.log_text().split()[0]))

    server.stop(timeout=10)

    assert server.proc.returncode == 0, "the server itself exited on SIGTERM"
    worker.wait(timeout=10)  # raises psutil.TimeoutExpired while the worker lives on
    assert not worker.is_running()
