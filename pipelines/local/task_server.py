"""Warm task processes for the embedded runner: kfp.local's tasks forked from an interpreter that has the stack imported.

kfp.local starts every task as a new interpreter, and each one imports kfp, pandas and
scikit-learn again: 0.2 s for the smallest step here, 1.3 s for one that fits a model, more
than the work itself on a small table. This server imports them once. kfp.local's
``python`` is the launcher (``pipelines/local/task_launcher.py``): it sends the task's argument
list, environment, working folder and standard streams here; the server forks, the child
(a supervisor) forks the task, tells the launcher the task's pid, passes signals on, and
reports its exit status. The task itself is what kfp.local asked for
(``python -m kfp.dsl.executor_main ...``), run with ``runpy`` in the forked process: the
same executor, the same component code, its own process and exit status.

The server imports the modules of ``PRELOAD`` one at a time, in the order the pipeline's
steps need them, and takes tasks between two imports: a task that comes early imports
what is not loaded yet itself. It ends when the process that started it does. Ask for it
with ``warm_tasks()``; ``FLYWHEEL_WARM_TASKS=false`` runs every task in a new interpreter.

It forks only while it is single-threaded: forking a threaded process copies one thread
and leaves any lock another held locked forever in the child. Libraries start threads of
their own at import, which ``threading`` does not list: OpenBLAS a pool per CPU (numpy's
and scipy's), pyarrow's jemalloc a background thread. The server is started with those
off (``single_threaded``; each task gets its BLAS threads back from its own environment,
as a new interpreter would; jemalloc purges in the allocating thread instead, and Arrow's
default pool is mimalloc anyway), and it counts its threads in ``/proc/self/task`` before every
fork: with more than one, the task is handed back and the launcher runs it in a new
interpreter (said once on stderr). What this uses of Python and Linux is checked when the
server is asked for (components/compat.py).

    python -m pipelines.local.task_server <socket path> [module to preload ...]   (warm_tasks() passes PRELOAD)
"""

from __future__ import annotations

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

from components.compat import check_task_server, run_atexit_handlers
from pipelines.local.task_launcher import PYTHON_ENV, SERVER_ENV

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


# The server's environment on top of its caller's: the libraries it preloads start no threads.
# OpenBLAS starts its pool when it loads, from this variable; jemalloc (pyarrow's) its background
# purging thread, from Arrow's build of jemalloc's configuration variable (options: later wins).
BLAS_THREADS = "OPENBLAS_NUM_THREADS"
JEMALLOC_CONF = "JE_ARROW_MALLOC_CONF"


def single_threaded(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the libraries' own threads off, for the server process."""
    conf = ",".join(c for c in (env.get(JEMALLOC_CONF), "background_thread:false") if c)
    return {**env, BLAS_THREADS: "1", JEMALLOC_CONF: conf}


def threads() -> list[str]:
    """The names of this process's threads, as the kernel lists them (native ones too)."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            names.append(Path(f"/proc/self/task/{tid}/comm").read_text().strip())
    return names


_warned = False


def _forkable() -> bool:
    """True when this process has one thread; else False, said once on stderr."""
    global _warned
    running = threads()
    if len(running) <= 1 and threading.active_count() <= 1:
        return True
    if not _warned:
        _warned = True
        print(f"task server: {len(running)} threads ({', '.join(sorted(running))}): forking would copy only one, "
              "so tasks run in new interpreters", file=sys.stderr, flush=True)
    return False


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
            if not _forkable():
                conn.close()  # no pid: the launcher runs the task in a new interpreter
                continue
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
    if not _forkable():  # forked from a single thread, so one; checked as before every fork
        os._exit(1)
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
    _blas_threads(task.env)
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
    run_atexit_handlers()  # the interpreter's own exit step, which os._exit skips
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return status


def _blas_threads(env: dict[str, str]) -> None:
    """The OpenBLAS threads a new interpreter with ``env`` would start (the server started none).

    OpenBLAS takes the first of these variables that is set, else one thread per CPU.
    """
    if "numpy" not in sys.modules:
        return
    from threadpoolctl import threadpool_limits  # scikit-learn's; present wherever numpy was preloaded

    wanted = next((env[v] for v in (BLAS_THREADS, "GOTO_NUM_THREADS", "OMP_NUM_THREADS") if env.get(v, "").isdigit()), "")
    threadpool_limits(limits=int(wanted) if wanted and int(wanted) > 0 else len(os.sched_getaffinity(0)), user_api="blas")


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
    """Start a task server; yields the launcher to use as ``sys.executable`` for kfp.local's tasks.

    Raises CompatError when this interpreter or kernel lacks what the server uses.
    """
    check_task_server()
    folder = Path(tempfile.mkdtemp(prefix="flywheel-tasks-"))
    path = folder / "server.sock"
    launcher = folder / "python"
    # a shell line rather than the interpreter in the #! line, which the kernel cuts at 127-255 bytes
    script = Path(__file__).with_name("task_launcher.py")
    launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -IS {shlex.quote(str(script))} "$@"\n')
    launcher.chmod(0o755)
    server = subprocess.Popen([sys.executable, "-m", "pipelines.local.task_server", str(path), *preload],
                              stdin=subprocess.DEVNULL, env=single_threaded(dict(os.environ)))
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
