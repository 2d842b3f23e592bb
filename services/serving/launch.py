"""Run the service locally (``flywheel serve``) and package it as a Bento (``bentoml build``).

Both hand the settings to the BentoML process as environment variables (``Settings.to_env``),
since the service reads its configuration at its own edge (``load_settings()``).
``ServerProcess`` is the one wrapper around a server child process (``flywheel run``'s, the
tests' and the benchmarks'): start it, wait until it answers, stop it with none of its workers left.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.settings import MODEL_THREAD_ENV, Settings
from services.serving import startup

SERVICE = "services.serving.worker:FlywheelServing"  # the worker entry point: the service, BentoML prepared for it
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CGROUP_ROOT = Path("/sys/fs/cgroup")
# glibc keeps this much free memory at the top of each worker's heap (and, being set, stops
# adjusting its mmap threshold). Without it, a large body's chunks and the joined body came
# from fresh pages on every request (page faults in bytes.join, seen with perf): a bare
# uvicorn app took 17-20 ms to read a 9.6 MB body instead of 5-6, and an Arrow /predict_many
# of 100,000 rows (log off) took 37 ms instead of 22 (wrk, one connection, this machine).
# Costs up to this much resident memory per worker once a body that large has been served.
# bentofile.yaml sets the same value for a Bento's container.
MALLOC_TOP_PAD = 32 << 20


class PackagingError(RuntimeError):
    """``bentoml build`` failed or produced no Dockerfile; the message says which."""


class ServerNotReady(RuntimeError):
    """A started server exited or did not answer in time; the message names its URL and its log file.

    ``tail`` holds the log's last lines (for a test's failure message).
    """

    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.tail = tail



def cpu_limit(cgroup_root: Path = CGROUP_ROOT) -> float:
    """CPUs this process may use: the cgroup v2 quota (``cpu.max``) if one is set, else the CPU count.

    On Kubernetes ``cpu.max`` holds the container's CPU limit ("200000 100000" is 2 CPUs);
    "max" or a missing file (no limit, cgroup v1, not Linux) falls back to the CPUs available.
    """
    available = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    try:
        quota, _, period = (cgroup_root / "cpu.max").read_text().strip().partition(" ")
    except OSError:
        return available
    if quota == "max" or not quota.isdigit() or not period.strip().isdigit() or int(period) == 0:
        return available
    return min(available, int(quota) / int(period))


def service_workers(settings: Settings, cgroup_root: Path = CGROUP_ROOT) -> int:
    """Worker processes of the service: ``serving_workers`` if set, else one per CPU of the limit.

    A fractional limit rounds up (a 1.5-CPU container gets 2 workers, one always busy while
    the other waits on I/O); never fewer than one.
    """
    if settings.serving_workers:
        return settings.serving_workers
    return max(1, math.ceil(cpu_limit(cgroup_root) - 1e-9))


def serve_command(settings: Settings, port: int = 3000, version: str | None = None, host: str = "127.0.0.1",
                  workers: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The ``bentoml serve`` command line and environment for these settings.

    ``version`` pins a registry version (the ``serving_model_version`` setting); ``workers``
    (else ``service_workers(settings)``) sets the service's worker processes.
    """
    bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    cmd = [bentoml, "serve", SERVICE, "--host", host, "--port", str(port)]
    if version:
        settings = settings.model_copy(update={"serving_model_version": version})
    env = settings.to_env(os.environ)
    env.setdefault("BENTOML_HOME", str(Path(settings.spill_dir).expanduser().resolve().parent / "bentoml"))
    # one compute thread per worker: the workers already use every CPU of the limit, and
    # OpenMP's per-call thread hand-off costs more than a small batch's whole prediction
    for name in MODEL_THREAD_ENV:
        env.setdefault(name, "1")
    env.setdefault("MALLOC_TOP_PAD_", str(MALLOC_TOP_PAD))
    options = f"services.\"flywheel-serving\".workers={workers or service_workers(settings)}"
    env["BENTOML_CONFIG_OPTIONS"] = " ".join(o for o in (env.get("BENTOML_CONFIG_OPTIONS"), options) if o)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    return cmd, env


def start(settings: Settings, port: int = 3000, version: str | None = None, host: str = "127.0.0.1",
          workers: int | None = None, env: dict[str, str] | None = None, log_path: Path | None = None) -> ServerProcess:
    """Start the service as a child process (a session of its own) and return it; ``env`` adds variables,
    ``log_path`` takes its output (else it goes to this process's)."""
    cmd, server_env = serve_command(settings, port, version, host, workers)
    return ServerProcess(cmd, {**server_env, **(env or {})}, port, log_path).start()


class ServerProcess:
    """A server run as a child process in a session of its own, its output in a log file.

    ``wait_ready`` polls it until it answers; ``stop`` sends SIGTERM (the service flushes its
    prediction log) and, past the timeout, kills it; either way none of its workers outlives it
    (circus starts each BentoML worker in a session of its own, so they are found as children,
    not by process group). Works for ``bentoml serve`` and plain ``uvicorn`` alike.
    """

    def __init__(self, cmd: list[str], env: dict[str, str], port: int, log_path: Path | None = None,
                 cwd: Path = PROJECT_ROOT) -> None:
        self.cmd, self.env, self.port, self.log_path, self.cwd = cmd, env, port, log_path, cwd
        self.proc: subprocess.Popen | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")
        out = {"stdout": self._log, "stderr": subprocess.STDOUT} if self._log is not None else {}
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, start_new_session=True, **out)
        return self

    def wait_ready(self, path: str = "/readyz", timeout: float = 180, *, in_a_row: int = 1, interval: float = 0.3,
                   probe: bytes | None = None) -> ServerProcess:
        """Until ``path`` answers 200 ``in_a_row`` times (GET, or POST ``probe`` as JSON); else stop it and
        raise ServerNotReady naming why and its log."""
        import httpx

        assert self.proc is not None, "start() the server first"

        def post() -> Any:
            return httpx.post(self.url + path, content=probe, headers={"content-type": "application/json"}, timeout=5)

        problem = wait_until_ok(self.proc, self.url + path, timeout, in_a_row=in_a_row, interval=interval,
                                request=post if probe is not None else None)
        if problem is None:
            return self
        tail = self.log_text()[-3000:]
        self.stop()
        raise ServerNotReady(f"the server at {self.url}{path} {problem}" + (f"; see {self.log_path}" if self.log_path else ""),
                             tail)

    def log_text(self) -> str:
        """What the server wrote so far ('' without a log file)."""
        if self._log is not None and not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def tree(self) -> list[Any]:
        """The server process and all its descendants (psutil processes)."""
        import psutil

        try:
            top = psutil.Process(self.proc.pid) if self.proc is not None else None
            return [top, *top.children(recursive=True)] if top else []
        except psutil.NoSuchProcess:
            return []

    def terminate(self, timeout: float = startup.STOP_SECONDS) -> int:
        """SIGTERM, as Kubernetes sends it; its exit code (it is stopped either way)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.stop()

    def kill(self) -> None:
        """SIGKILL the server and every worker at once, as the kubelet does when the grace period ends."""
        _kill(self.tree())
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = startup.STOP_SECONDS) -> None:
        """SIGTERM, then SIGKILL past ``timeout``; no worker outlives it; closes the log. Safe to call twice."""
        if self.proc is not None:
            startup.stop(self.proc, timeout)
        if self._log is not None:
            self._log.close()


def _kill(processes: list[Any]) -> None:
    import psutil

    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def serve(settings: Settings, port: int = 3000, version: str | None = None, host: str = "127.0.0.1") -> int:
    """Run the service in the foreground until it exits or is interrupted; returns its exit code.

    ``version`` pins a registry version; None serves the ``serving_model_version`` setting (the champion by default).
    SIGINT/SIGTERM are passed on so the service flushes its prediction log before exiting.
    A worker that cannot start (the store unreachable, say) stops the whole server at once:
    raises StartupFailed with the worker's reason (services/serving/startup.py).
    """
    with tempfile.TemporaryDirectory(prefix="flywheel-serve-") as tmp:
        failure = Path(tmp) / "startup-failure"
        proc = start(settings, port, version, host, env={startup.FAILURE_FILE: str(failure)}).proc

        def forward(signum: int, _frame: Any) -> None:
            proc.send_signal(signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return startup.supervise(proc, failure)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def wait_until_ok(proc: subprocess.Popen, url: str, timeout: float, *, in_a_row: int = 1, interval: float = 0.3,
                  request: Callable[[], Any] | None = None) -> str | None:
    """Poll a started server until ``in_a_row`` answers in a row are 200 (GET ``url``, or ``request()``).

    None when it is ready, else why not: it exited, or it was not ready in time. A server with
    several workers answers from one of them, hence ``in_a_row``.
    """
    import httpx

    deadline = time.monotonic() + timeout
    ok_in_a_row = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        ok = False
        try:
            ok = (request() if request else httpx.get(url, timeout=2)).status_code == 200
        except httpx.HTTPError:
            pass
        ok_in_a_row = ok_in_a_row + 1 if ok else 0
        if ok_in_a_row >= in_a_row:
            return None
        time.sleep(0.1 if ok else interval)
    return f"not ready within {timeout:.0f} s"


def find_uv() -> str:
    """uv: on PATH, or where the Makefile installs it when the machine has none (.tools/bin)."""
    uv = shutil.which("uv") or shutil.which("uv", path=str(PROJECT_ROOT / ".tools" / "bin"))
    if uv is None:
        raise PackagingError("uv is neither on PATH nor in .tools/bin (`make env` installs it there); "
                             "it exports the Bento's requirements from uv.lock, and bentoml build runs it")
    return uv


def export_requirements(out: Path, uv: str) -> Path:
    """Pinned requirements from uv.lock, offline (no lock step): what the Bento installs."""
    result = subprocess.run(
        [uv, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "--format", "requirements-txt",
         "--output-file", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PackagingError(f"uv export from uv.lock failed: {result.stderr.strip()[:500]}")
    return out


def build_bento(bentoml_home: str | Path, version: str | None = None) -> Path:
    """``bentoml build`` of bentofile.yaml, offline, into ``bentoml_home``; returns the Bento dir.

    The requirements are exported from uv.lock (``lock_packages: false``, so BentoML does
    no network lock step). Keep ``bentoml_home`` outside the project directory, or the
    store would end up inside the build context.
    """
    home = Path(bentoml_home).expanduser().resolve()
    if home == PROJECT_ROOT or PROJECT_ROOT in home.parents:
        raise PackagingError(f"BENTOML_HOME {home} is inside the project, which is the build context; use a directory outside it")
    home.mkdir(parents=True, exist_ok=True)
    uv = find_uv()
    export_requirements(PROJECT_ROOT / "requirements.bento.txt", uv)
    bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    cmd = [bentoml, "build", str(PROJECT_ROOT), "--bentofile", str(PROJECT_ROOT / "bentofile.yaml"), "--output", "tag"]
    if version:
        cmd += ["--version", version]
    # bentoml build runs uv from PATH (and tries to pip-install it when there is none)
    path = os.pathsep.join(p for p in (str(Path(uv).parent), os.environ.get("PATH")) if p)
    env = {**os.environ, "PATH": path, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    try:
        result = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    finally:
        (PROJECT_ROOT / "requirements.bento.txt").unlink(missing_ok=True)
    if result.returncode != 0:
        raise PackagingError(f"bentoml build failed: {(result.stderr or result.stdout).strip()[-1500:]}")
    tag = _tag(result.stdout)
    name, _, ver = tag.partition(":")
    bento = home / "bentos" / name / ver
    if not (bento / "env" / "docker" / "Dockerfile").is_file():
        raise PackagingError(f"bentoml build made {bento} without env/docker/Dockerfile")
    return bento


def _tag(stdout: str) -> str:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("__tag__:"):
            return line.removeprefix("__tag__:")
        if ":" in line and " " not in line:
            return line
    raise PackagingError(f"bentoml build printed no Bento tag: {stdout.strip()[-500:]}")
