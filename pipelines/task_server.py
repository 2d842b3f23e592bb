"""Warm task processes for the embedded runner: kfp.local's tasks forked from an interpreter that has the stack imported.

kfp.local starts every task as a new interpreter, and each one imports kfp, pandas and
scikit-learn again: 0.2 s for the smallest step here, 1.3 s for one that fits a model, more
than the work itself on a small table. This server imports them once. kfp.local's
``python`` is the launcher (``pipelines/task_launcher.py``): it sends the task's argument
list, environment, working folder and standard streams here; the server forks, the child
(a supervisor) forks the task, tells the launcher the task's pid, passes signals on, and
reports its exit status. The task itself is what kfp.local asked for
(``python -m kfp.dsl.executor_main ...``), run with ``runpy`` in the forked process: the
same executor, the same component code, its own process and exit status.

The server imports the modules of ``PRELOAD`` one at a time, in the order the pipeline's
steps need them, and takes tasks between two imports: a task that comes early imports
what is not loaded yet itself. It stays single-threaded (forking a threaded process is
unsafe) and ends when the process that started it does. Ask for it with
``warm_tasks()``; ``FLYWHEEL_WARM_TASKS=false`` runs every task in a new interpreter.

    python -m pipelines.task_server <socket path> [module to preload ...]   (warm_tasks() passes PRELOAD)
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import runpy
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.task_launcher import PYTHON_ENV, SERVER_ENV

# In the order the training pipeline's steps need them (champion, ingest ... refit, evaluate, deploy),
# with what pandas and scikit-learn import only on first use (reading Parquet, fitting on a DataFrame).
PRELOAD = (
    "kfp.dsl.executor_main", "components.runtime", "components.registry", "components.status",
    "pandas", "pyarrow.parquet", "pyarrow.dataset", "pyarrow.pandas_compat",
    "components.ingest", "components.validate", "components.split",
    "sklearn.pipeline", "sklearn.compose", "sklearn.preprocessing", "sklearn.impute", "sklearn.linear_model",
    "sklearn.ensemble", "sklearn.model_selection", "sklearn.metrics", "joblib",
    "narwhals._pandas_like.namespace", "narwhals._pandas_like.dataframe", "narwhals._interchange.dataframe",
    "components.train", "components.package", "components.onnx_export", "components.evaluate",
    "components.register", "components.deploy", "skl2onnx",
)


@dataclass(frozen=True)
class Task:
    """What the launcher asked for: ``python <argv>`` in ``cwd`` with ``env`` and its standard streams."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    fds: list[int]


def serve(path: str, preload: Sequence[str] = PRELOAD) -> Task | None:
    """Take tasks on ``path`` until the parent process ends; returns only in a forked task (its Task)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    parent = os.getppid()
    pending = list(preload)
    while True:
        _reap()
        ready, _, _ = select.select([listener], [], [], 0 if pending else 1.0)
        if ready:
            conn, _ = listener.accept()
            if os.fork() == 0:
                listener.close()
                return _supervise(conn)
            conn.close()
        elif pending:
            _load(pending.pop(0))
        elif os.getppid() != parent:
            return None


def _reap(wait_seconds: float = 0.0) -> None:
    """Wait for the supervisors that ended (for up to ``wait_seconds`` for the rest): no zombies, and
    their tasks' resource use (peak memory) counts to this process's children, as a new
    interpreter's would to kfp.local's."""
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            if not os.waitpid(-1, os.WNOHANG)[0]:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.01)
    except ChildProcessError:  # none left
        pass


def _load(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a module that cannot be imported is imported (and fails) in the task
        print(f"task server: {module} was not preloaded: {exc}", file=sys.stderr, flush=True)
    gc.freeze()  # what is loaded stays out of the collector: forked tasks share its pages


def _receive(conn: socket.socket) -> Task:
    head, fds, _, _ = socket.recv_fds(conn, 8, 3)
    size = int.from_bytes(head, "big")
    body = bytearray()
    while len(body) < size:
        chunk = conn.recv(min(1 << 16, size - len(body)))
        if not chunk:
            raise ConnectionError("the launcher closed the connection")
        body += chunk
    request = json.loads(body)
    return Task(argv=request["argv"], cwd=request["cwd"], env=request["env"], fds=list(fds))


def _supervise(conn: socket.socket) -> Task:
    """In the supervisor: fork the task; pass signals on; report its exit status. Returns only in the task."""
    try:
        task = _receive(conn)
    except (OSError, ValueError, KeyError):
        os._exit(1)  # the launcher runs the task itself when it gets no pid
    pid = os.fork()
    if pid == 0:
        conn.close()
        return task
    for fd in task.fds:
        os.close(fd)
    print(f"task server: forked task {pid}: python {' '.join(task.argv[:2])}", file=sys.stderr, flush=True)
    try:
        conn.sendall(f"{pid}\n".encode())
        done = os.pidfd_open(pid)
        while True:
            ready, _, _ = select.select([conn, done], [], [])
            if done in ready:
                break
            message = conn.recv(64)
            with contextlib.suppress(ProcessLookupError):  # the task may just have ended
                for line in message.decode().split():
                    os.kill(pid, int(line))  # a signal the launcher got
                if not message:  # the launcher is gone: so is its task
                    os.kill(pid, signal.SIGKILL)
            if not message:
                break
        _, status = os.waitpid(pid, 0)
        conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    finally:
        os._exit(0)


def run(task: Task) -> int:
    """In the forked task: ``python -m <module> <args>`` with the launcher's streams, folder and environment.

    Returns the exit status (negative: the signal to end by). The interpreter's own exit is
    left out (the caller ends with ``os._exit``): its teardown walks every object the server
    imported, and writing to those shared pages copies them, 0.15 s a task here. What a task's
    exit must do is done here: an exception's traceback, the status of ``sys.exit``, the other
    threads joined, the ``atexit`` handlers (logging's flush among them), the streams flushed.
    """
    for target, fd in enumerate(task.fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(task.cwd)
    os.environ.clear()
    os.environ.update(task.env)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if "numpy" in sys.modules:  # as a new interpreter would: not the server's random state
        sys.modules["numpy"].random.seed()
    module, args = task.argv[1], task.argv[2:]
    sys.path[0] = task.cwd  # `python -m` puts the working folder first
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except BaseException as exc:  # noqa: BLE001 - as the interpreter does: the traceback, then status 1
        sys.excepthook(*sys.exc_info())
        status = -signal.SIGINT if isinstance(exc, KeyboardInterrupt) else 1  # Ctrl-C: ends by SIGINT
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # noqa: SLF001 - the interpreter's own exit step, which os._exit skips
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return status


def _exit_status(code: object) -> int:
    """The status ``sys.exit(code)`` gives: None is 0, an int itself, anything else printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def warm_tasks(preload: Sequence[str] = PRELOAD) -> Iterator[str]:
    """Start a task server; yields the launcher to use as ``sys.executable`` for kfp.local's tasks."""
    folder = Path(tempfile.mkdtemp(prefix="flywheel-tasks-"))
    path = folder / "server.sock"
    launcher = folder / "python"
    # a shell line rather than the interpreter in the #! line, which the kernel cuts at 127-255 bytes
    script = Path(__file__).with_name("task_launcher.py")
    launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -IS {shlex.quote(str(script))} "$@"\n')
    launcher.chmod(0o755)
    server = subprocess.Popen([sys.executable, "-m", "pipelines.task_server", str(path), *preload],
                              stdin=subprocess.DEVNULL)
    saved = {name: os.environ.get(name) for name in (SERVER_ENV, PYTHON_ENV)}
    os.environ[SERVER_ENV], os.environ[PYTHON_ENV] = str(path), sys.executable
    try:
        yield str(launcher)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.terminate()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _stop(*_: object) -> None:
    """SIGTERM from the runner: its tasks have ended; collect the last supervisors, then exit."""
    _reap(wait_seconds=1.0)
    sys.exit(0)


def main(argv: list[str]) -> int:
    path, preload = argv[0], argv[1:]
    signal.signal(signal.SIGTERM, _stop)
    task = serve(path, preload)
    if task is None:
        return 0
    status = run(task)
    if status < 0:  # as an interpreter ends on an uncaught KeyboardInterrupt: by the signal itself
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status & 0xFF)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
