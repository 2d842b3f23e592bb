"""The real BentoML server of `flywheel run`, as a child process in its own process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from components.settings import Settings
from pipelines.loop_guards import LoopError


class Server:
    """The real BentoML server as a child process (its own process group)."""

    def __init__(self, settings: Settings, port: int, log_path: Path) -> None:
        from services.serving.launch import start

        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log_path, "ab")
        # one worker: /readyz answers from one worker only, and the loop's traffic starts on it
        self.proc = start(settings, port, workers=1, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180, in_a_row: int = 12) -> None:
        """Until ``in_a_row`` fresh connections in a row find it ready.

        Each connection may land on another worker process, and a worker answers /readyz for
        itself only: one 200 can come from the first worker to load the model while another
        would still answer 503.
        """
        from services.serving.launch import wait_until_ok

        problem = wait_until_ok(self.proc, f"{self.url}/readyz", timeout, in_a_row=in_a_row, interval=0.5)
        if problem:
            raise LoopError(f"the serving process {problem}; see {self.log.name}")

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
