"""Fixtures for the serving tests: model versions in a store, and a real `bentoml serve`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from components.registry import Registry
from components.settings import Settings, load_settings
from components.store import LocalStore
from services.serving import launch
from tests.serving.models import LINEAR, LOGISTIC, add_version, diabetes_frame, wine_frame

READY_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bentoml serve` of the Flywheel service on a free loopback port, in its own process group."""

    def __init__(self, settings: Settings, log_path: Path, version: str | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.version = version
        self.log_path = log_path
        # one worker: a swap or a metric is then seen by every request (the default follows the CPUs)
        self.extra_env = {"FLYWHEEL_SERVING_POLL_SECONDS": "0.5", "FLYWHEEL_SERVING_WORKERS": "1", **(extra_env or {})}
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready: bool = True) -> Server:
        """Start and wait until /readyz answers 200 (only /healthz when ``ready`` is False)."""
        self.port = free_port()
        # the worker count goes into BENTOML_CONFIG_OPTIONS, so it must reach serve_command itself
        workers = self.extra_env.get("FLYWHEEL_SERVING_WORKERS") or self.settings.serving_workers
        cmd, env = launch.serve_command(self.settings, self.port, self.version,
                                        workers=int(workers) if workers else None)
        env.update(self.extra_env)
        env["BENTOML_HOME"] = str(self.log_path.parent / "bentoml-home")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=launch.PROJECT_ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        problem = launch.wait_until_ok(self.proc, f"{self.url}/{'readyz' if ready else 'healthz'}", READY_TIMEOUT)
        if problem is None:
            return self
        self.stop()
        raise RuntimeError(f"server {problem}: {self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, as Kubernetes sends it; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.stop()

    def tree(self) -> list[psutil.Process]:
        """The arbiter and its workers (circus starts each worker in a session of its own)."""
        try:
            arbiter = psutil.Process(self.proc.pid) if self.proc is not None else None
            return [arbiter, *arbiter.children(recursive=True)] if arbiter else []
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the arbiter and every worker at once, as the kubelet does when the grace period ends."""
        for p in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None:
            return
        tree = self.tree()
        self._stop()
        for p in tree:  # no worker outlives its server
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()

    def _stop(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        else:  # the arbiter is gone; make sure no worker outlives it
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()


@pytest.fixture(scope="session")
def serving_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store with a promoted classifier ('wine') and regressor ('diabetes')."""
    root = tmp_path_factory.mktemp("serving") / "store"
    store = LocalStore(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(Registry(store, "wine"), wine_frame(), "target", LOGISTIC)
        add_version(Registry(store, "diabetes"), diabetes_frame(), "target", LINEAR)
    return root


def serving_settings(store: Path | str, model: str, tmp: Path, **extra: Any) -> Settings:
    return load_settings(store=str(store), model=model, spill_dir=str(tmp / "spill"),
                         log_flush_rows=extra.pop("log_flush_rows", 200),
                         log_flush_seconds=extra.pop("log_flush_seconds", 0.5), **extra)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """Start servers during a test; every one is stopped when the test ends."""
    servers: list[Server] = []

    def start(settings: Settings, version: str | None = None, **env: str) -> Server:
        server = Server(settings, tmp_path / f"server-{len(servers)}.log", version, env)
        servers.append(server)
        return server.start()

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory, serving_store: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server for the model named by the module's MODEL, shared by its tests."""
    tmp = tmp_path_factory.mktemp(f"srv-{request.module.MODEL}")
    server = Server(serving_settings(serving_store, request.module.MODEL, tmp), tmp / "server.log")
    try:
        yield server.start()
    finally:
        server.stop()
