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

import psutil
import pytest

from pipelines.local.task_launcher import SERVER_ENV
from pipelines.local.task_server import PRELOAD, single_threaded, warm_tasks

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


def _threads_after(statement: str, env: dict[str, str]) -> list[str]:
    """The names of a new interpreter's threads (native ones too) after ``statement``."""
    code = (f"import json, os; {statement}; print(json.dumps(sorted(open(f'/proc/self/task/{{t}}/comm').read().strip() "
            "for t in os.listdir('/proc/self/task'))))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_server_has_one_thread_after_preloading_everything() -> None:
    """pyarrow's jemalloc and numpy's and scipy's OpenBLAS start threads at import; the server starts them off."""
    load = f"import importlib; [importlib.import_module(m) for m in {list(PRELOAD)!r}]"
    assert "jemalloc_bg_thd" in _threads_after(load, dict(os.environ))  # what the server would have had
    assert _threads_after(load, single_threaded(dict(os.environ))) == ["python"]


def _server(launcher_env: dict[str, str]) -> psutil.Process:
    """The task server serving this launcher environment (a child of this process)."""
    path = launcher_env[SERVER_ENV]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in psutil.Process().children():
            if "pipelines.local.task_server" in child.cmdline() and path in child.cmdline():
                return child
        time.sleep(0.05)
    raise AssertionError(f"no task server for {path}")


def _wait_for_threads(server: psutil.Process, count: int) -> None:
    deadline = time.monotonic() + 120
    while server.num_threads() < count:
        assert time.monotonic() < deadline, f"the server has {server.num_threads()} threads, never {count}"
        time.sleep(0.05)


@pytest.mark.parametrize("second_thread", [
    "import _thread, time; _thread.start_new_thread(time.sleep, (3600,))",  # an OS thread `threading` does not list
    # a native one: pyarrow's jemalloc with its background thread, as it starts by default
    "import os; os.environ['JE_ARROW_MALLOC_CONF'] = 'background_thread:true'; import pyarrow",
])
def test_a_server_with_a_second_thread_runs_tasks_in_new_interpreters(work, monkeypatch, capfd, second_thread):
    (work / "fwthread.py").write_text(second_thread + "\n")
    monkeypatch.setenv("PYTHONPATH", str(work))  # the server imports it from there
    with warm_tasks(preload=(MARKER, "fwthread")) as python:
        env = dict(os.environ)
        server = _server(env)
        _wait_for_threads(server, 2)  # fwthread is loaded and its thread runs
        results = [run(python, env, work, str(code)) for code in (3, 4)]
        assert server.num_threads() == 2  # the server kept its thread, and never forked with it
    assert [r.returncode for r in results] == [3, 4]
    assert [json.loads(r.stdout.splitlines()[0])["warm"] for r in results] == [False, False]  # new interpreters
    err = capfd.readouterr().err
    assert err.count("task server: 2 threads") == 1 and "tasks run in new interpreters" in err  # said once
    assert "forked task" not in err


def test_a_warm_task_gets_the_blas_threads_a_new_interpreter_would(work, monkeypatch):
    """The server loads OpenBLAS with one thread; a task forked from it gets what its environment asks for."""
    (work / "fwblas.py").write_text("import json, sys, threadpoolctl\n"
                                    "print(json.dumps([sys.modules.get('fwwarm') is not None,"
                                    " sorted(i['num_threads'] for i in threadpoolctl.threadpool_info()"
                                    " if i['user_api'] == 'blas')]))\n")
    (work / "fwwarm.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(work))
    with warm_tasks(preload=("numpy", "scipy.linalg", "fwwarm")) as python:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}
        _wait_until_preloaded(python, env, work)
        warm = subprocess.run([python, "-m", "fwblas"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    cold = subprocess.run([sys.executable, "-c", "import numpy, scipy.linalg; import fwblas"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    warm_loaded, warm_threads = json.loads(warm.stdout)
    assert warm_loaded is True  # forked from the server
    assert warm_threads == json.loads(cold.stdout)[1] == [2, 2]  # numpy's OpenBLAS and scipy's


def _wait_until_preloaded(python: str, env: dict[str, str], work: Path) -> None:
    """Until a task finds ``fwwarm`` preloaded: the server has loaded everything before it."""
    (work / "fwprobe.py").write_text("import sys\nsys.exit(0 if 'fwwarm' in sys.modules else 3)\n")
    deadline = time.monotonic() + 120
    while subprocess.run([python, "-m", "fwprobe"], cwd=work, env=env, timeout=60).returncode != 0:
        assert time.monotonic() < deadline, "the server never preloaded fwwarm"


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
