"""The serving benchmark's sides are matched: counted from the running processes, not from a constant.

The bench's sides are started by ``python -m benchmarks.serving_sides`` as a subprocess (the
very code ``make bench`` uses), and this test reads their process trees itself through /proc
(psutil): benchmarks and tests do not import each other.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2  # asked of every side; the assertions compare what the processes show
THREAD_CAPS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_TOP_PAD_")

# its tier (tests/conftest.py gives the tests under tests/ theirs by folder)
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    """Every side of the linear shape, up and ready, as the bench starts them; stopped afterwards."""
    errors = tmp_path_factory.mktemp("sides") / "stderr.log"
    with open(errors, "w") as stderr:  # a file, not a pipe nobody reads while the servers start
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.serving_sides", "linear", str(WORKERS)], cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
    line = proc.stdout.readline()  # printed once every side answers
    if not line:
        proc.wait(timeout=60)
        pytest.fail(f"benchmarks.serving_sides exited with {proc.returncode}: {errors.read_text()[-2000:]}")
    try:
        yield json.loads(line)["sides"]
    finally:
        proc.stdin.close()  # the signal to stop its servers
        proc.wait(timeout=180)


def workers_of(pid: int, port: int) -> list[psutil.Process]:
    """Processes under ``pid`` that listen on ``port`` and hand it to no child: the ones serving requests."""
    root = psutil.Process(pid)
    listening = [p for p in (root, *root.children(recursive=True))
                 if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in p.net_connections("tcp"))]
    supervisors = {p.ppid() for p in listening}
    return [p for p in listening if p.pid not in supervisors]


@pytest.mark.timeout(900)
def test_every_side_runs_the_same_number_of_worker_processes(sides: dict[str, dict]) -> None:
    counted = {name: len(workers_of(s["pid"], s["port"])) for name, s in sides.items()}
    assert set(sides) >= {"service", "fastapi_logged", "fastapi_plain", "ceiling"}
    assert counted["fastapi_logged"] == counted["fastapi_plain"] == counted["ceiling"] == counted["service"] == WORKERS, \
        counted


@pytest.mark.timeout(900)
def test_every_worker_has_the_same_thread_caps_and_heap_pad(sides: dict[str, dict]) -> None:
    seen = {name: {tuple(w.environ().get(v) for v in THREAD_CAPS) for w in workers_of(s["pid"], s["port"])}
            for name, s in sides.items()}
    assert len(set().union(*seen.values())) == 1, seen  # one setting across every worker of every side
    assert None not in next(iter(seen["service"])), seen  # and each is set, not left to the library
