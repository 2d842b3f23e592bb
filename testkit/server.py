"""A real `bentoml serve` of the Flywheel service for the tests and the benchmarks, and its settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.net import free_port
from components.settings import Settings, load_settings
from services.serving import launch

READY_TIMEOUT = 120


class Server(launch.ServerProcess):
    """`bentoml serve` of the Flywheel service for these settings, on a free loopback port (one worker by default)."""

    def __init__(self, settings: Settings, log_path: Path, version: str | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        super().__init__([], {}, 0, log_path)
        self.settings = settings
        self.version = version
        # one worker: a swap or a metric is then seen by every request (the default follows the CPUs)
        self.extra_env = {"FLYWHEEL_SERVING_POLL_SECONDS": "0.5", "FLYWHEEL_SERVING_WORKERS": "1", **(extra_env or {})}

    def start(self, ready: bool = True) -> Server:
        """Start and wait until /readyz answers 200 (only /healthz when ``ready`` is False)."""
        self.port = free_port()
        # the worker count goes into BENTOML_CONFIG_OPTIONS, so it must reach serve_command itself
        workers = self.extra_env.get("FLYWHEEL_SERVING_WORKERS") or self.settings.serving_workers
        self.cmd, self.env = launch.serve_command(self.settings, self.port, self.version,
                                                  workers=int(workers) if workers else None)
        self.env.update(self.extra_env)
        self.env["BENTOML_HOME"] = str(self.log_path.parent / "bentoml-home")
        super().start()
        try:
            self.wait_ready("/readyz" if ready else "/healthz", READY_TIMEOUT)
        except launch.ServerNotReady as exc:
            raise RuntimeError(f"{exc}: {exc.tail}") from None
        return self


def serving_settings(store: Path | str, model: str, tmp: Path, **extra: Any) -> Settings:
    return load_settings(store=str(store), model=model, spill_dir=str(tmp / "spill"),
                         log_flush_rows=extra.pop("log_flush_rows", 200),
                         log_flush_seconds=extra.pop("log_flush_seconds", 0.5), **extra)
