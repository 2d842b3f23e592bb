"""A worker that cannot start ends the whole server, at once and with one sentence.

BentoML runs the service in worker processes under a circus arbiter (``bentoml serve``). When a
worker's ``__init__`` raises (the store unreachable, a store directory that cannot be written,
a bad setting), uvicorn logs "Application startup failed" and the worker exits, but the
arbiter lives on: outside a container it respawns the worker again and again, inside one
(``BENTOML_CONTAINERIZED``) it keeps the socket open with no worker behind it. Either way the
process stays up, ``/healthz`` times out and only a startup probe ends it, minutes later.

So the launcher (``flywheel serve``, a container's PID 1) names a file in ``FAILURE_FILE``; a
worker whose start-up fails writes why into it before it exits, and the launcher, which waits
on the server with ``supervise``, stops it and raises ``StartupFailed`` with that sentence.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The environment variable naming the file (set by the launcher, read by the worker at its edge).
FAILURE_FILE = "FLYWHEEL_STARTUP_FAILURE_FILE"
# How long a stopping server may take before it is killed: a worker that had started flushes
# its prediction log on the way out (bounded by the log's close path, well under this).
STOP_SECONDS = 60.0


class StartupFailed(RuntimeError):
    """The service could not start; the message is the worker's reason, in one sentence."""


def reason(exc: BaseException) -> str:
    """One sentence for a failed start-up: the error's own message when it is a user's error
    (they name the store, file or setting), else its type and message."""
    from components.settings import ConfigError
    from components.store import StoreError

    text = " ".join(str(exc).split()) or "no message"
    return text if isinstance(exc, (StoreError, ConfigError)) else f"{type(exc).__name__}: {text}"


@contextmanager
def reported(failure_file: str | None) -> Iterator[None]:
    """Run a worker's start-up; if it raises, write why to ``failure_file`` (when the launcher
    named one) and let the error go on to BentoML, which ends the worker."""
    try:
        yield
    except Exception as exc:
        if failure_file:
            path = Path(failure_file)
            tmp = path.with_name(f"{path.name}.{os.getpid()}")
            tmp.write_text(reason(exc))
            os.replace(tmp, path)  # the launcher never reads half a sentence
        raise


def supervise(proc: subprocess.Popen, failure_file: Path, poll_seconds: float = 0.2,
              stop_seconds: float = STOP_SECONDS) -> int:
    """Wait for the server to exit and return its exit code.

    When a worker reports a failed start-up first, stop the server (SIGTERM, then SIGKILL
    after ``stop_seconds``) and raise StartupFailed with the worker's reason.
    """
    while True:
        try:
            code = proc.wait(timeout=poll_seconds)
        except subprocess.TimeoutExpired:
            code = None
        if failure_file.exists():
            if code is None:
                stop(proc, stop_seconds)
            raise StartupFailed(f"the service cannot start: {failure_file.read_text()}")
        if code is not None:
            return code


def stop(proc: subprocess.Popen, stop_seconds: float = STOP_SECONDS) -> None:
    """SIGTERM the server (its arbiter stops the workers); if it outlasts ``stop_seconds``, kill it.

    Either way no worker outlives it: circus starts each worker in a session of its own, so the
    workers are found as the server's children (before the signal) and killed if still there.
    Safe on a server that has exited already.
    """
    import psutil

    try:
        workers = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    except psutil.NoSuchProcess:
        workers = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=stop_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for w in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            w.kill()
