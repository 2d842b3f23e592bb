"""The task server and its launcher: a task forked warm behaves as the same command in a new interpreter.

Real processes throughout: the server process, the launcher script kfp.local would run,
and the task forked from the server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.task_launcher import SERVER_ENV
from pipelines.task_server import warm_tasks

# Not imported by a new interpreter (nor by the launcher): present in a task only if the server preloaded it.
MARKER = "xml.dom.minidom"

TASK = textwrap.dedent(f"""
    import atexit, json, os, sys, time
    warm = {MARKER!r} in sys.modules
    atexit.register(print, "an atexit handler ran")
    if sys.argv[1:2] == ["hang"]:
        open(sys.argv[2], "w").write(str(os.getpid()))
        time.sleep(60)
    print(json.dumps({{"argv": sys.argv, "cwd": os.getcwd(), "value": os.environ.get("TASK_VALUE"),
                      "path0": sys.path[0], "main": __name__, "warm": warm}}))
    print("to stderr", file=sys.stderr)
    if sys.argv[1:2] == ["fail"]:
        raise RuntimeError("the task failed")
    sys.exit(int(sys.argv[1]) if sys.argv[1:2] and sys.argv[1].isdigit() else 0)
""")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "fwtask.py").write_text(TASK)
    return tmp_path


@pytest.fixture(scope="module")
def launcher():
    with warm_tasks(preload=(MARKER,)) as python:
        deadline = time.monotonic() + 30
        while not Path(os.environ[SERVER_ENV]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield python, dict(os.environ)


def run(python: str, env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "fwtask", *args], cwd=cwd, env={**env, "TASK_VALUE": "from the caller"},
                          capture_output=True, text=True, timeout=60)


def test_a_warm_task_is_the_same_command_in_a_new_interpreter(launcher, work):
    python, env = launcher
    warm = run(python, env, work, "7", "two")
    cold = run(sys.executable, env, work, "7", "two")
    assert (warm.returncode, cold.returncode) == (7, 7)
    assert warm.stdout.splitlines()[1:] == cold.stdout.splitlines()[1:] == ["an atexit handler ran"]
    warm_out, cold_out = json.loads(warm.stdout.splitlines()[0]), json.loads(cold.stdout.splitlines()[0])
    assert warm_out.pop("warm") is True and cold_out.pop("warm") is False  # forked from the server: preloaded
    assert warm_out == cold_out  # argv (the module's path first), folder, environment, sys.path[0], __main__
    assert warm_out["value"] == "from the caller" and warm_out["cwd"] == str(work)
    assert warm.stderr == cold.stderr == "to stderr\n"


def test_a_failing_task_fails_with_its_traceback(launcher, work):
    python, env = launcher
    result = run(python, env, work, "fail")
    assert result.returncode == 1
    assert "RuntimeError: the task failed" in result.stderr
    assert result.stdout.splitlines()[-1] == "an atexit handler ran"


@pytest.mark.parametrize("ending, status, stderr", [
    ("sys.exit(None)", 0, ""), ("sys.exit(300)", 300 & 0xFF, ""), ("sys.exit('no table')", 1, "no table"),
    ("raise KeyboardInterrupt", -signal.SIGINT, "KeyboardInterrupt"),  # Ctrl-C: the process ends by SIGINT
])
def test_a_task_ends_with_the_status_a_new_interpreter_gives(launcher, work, ending, status, stderr):
    python, env = launcher
    (work / "exits.py").write_text(f"import sys\n{ending}\n")
    warm = subprocess.run([python, "-m", "exits"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    cold = subprocess.run([sys.executable, "-m", "exits"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert warm.returncode == cold.returncode == status
    assert warm.stderr.strip().splitlines()[-1:] == cold.stderr.strip().splitlines()[-1:] == ([stderr] if stderr else [])


def test_a_signal_to_the_launcher_reaches_the_task(launcher, work):
    python, env = launcher
    pid_file = work / "pid"
    proc = subprocess.Popen([python, "-m", "fwtask", "hang", str(pid_file)], cwd=work, env=env)
    task = _wait_for_pid(pid_file)
    assert task != proc.pid  # the task is the forked process, not the launcher
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM  # the launcher ends as its task did
    _assert_gone(task)


def test_a_killed_launcher_takes_its_task_with_it(launcher, work):
    python, env = launcher
    pid_file = work / "pid"
    proc = subprocess.Popen([python, "-m", "fwtask", "hang", str(pid_file)], cwd=work, env=env)
    task = _wait_for_pid(pid_file)
    proc.kill()
    proc.wait(timeout=30)
    _assert_gone(task)


def test_without_a_server_the_launcher_runs_the_real_interpreter(launcher, work):
    python, env = launcher
    result = run(python, {**env, SERVER_ENV: str(work / "no-server.sock")}, work, "3")
    assert result.returncode == 3
    assert json.loads(result.stdout.splitlines()[0])["warm"] is False
    other = subprocess.run([python, "-c", "import sys; print(sys.flags.isolated)"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert other.stdout.strip() == "0"  # not `-m`: the real interpreter, with its usual flags


def _wait_for_pid(path: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"the task never wrote {path}")


def _assert_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":  # exited, not yet reaped
            return
        time.sleep(0.05)
    raise AssertionError(f"task {pid} still runs")
