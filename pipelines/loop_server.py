"""The real BentoML server of `flywheel run`, as a child process in its own process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from components.settings import Settings
from pipelines.loop_guards import LoopError


class Server:
    """The real BentoML server as a child process (its own process group)."""

    def __init__(self, settings: Settings, port: int, log_path: Path) -> None:
        from services.serving.launch import start

        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log_path, "ab")
        self.proc = start(settings, port, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180, in_a_row: int = 12) -> None:
        """Until ``in_a_row`` fresh connections in a row find it ready.

        Each connection may land on another worker process, and a worker answers /readyz for
        itself only: one 200 can come from the first worker to load the model while another
        would still answer 503.
        """
        deadline = time.monotonic() + timeout
        ready = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LoopError(f"the serving process exited with code {self.proc.returncode}; see {self.log.name}")
            ok = False
            with contextlib.suppress(httpx.HTTPError):
                ok = httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            ready = ready + 1 if ok else 0
            if ready >= in_a_row:
                return
            time.sleep(0.1 if ok else 0.5)
        raise LoopError(f"the service was not ready within {timeout:.0f} s; see {self.log.name}")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM: the service flushes its prediction log before it exits."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
