"""A real Prometheus Pushgateway on a free loopback port, and reading metrics the way Prometheus does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.serving.launch import wait_until_ok
from tests.conftest import free_port


class Pushgateway:
    """`prometheus-pushgateway` (Debian package) without persistence, in its own process group."""

    def __init__(self, binary: str, log_path: Path) -> None:
        self.binary, self.log_path = binary, log_path
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Pushgateway:
        self.port = free_port()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, f"--web.listen-address=127.0.0.1:{self.port}", "--persistence.file="],
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        problem = wait_until_ok(self.proc, f"{self.url}/-/ready", timeout, interval=0.2)
        if problem is None:
            return self
        self.stop()
        raise RuntimeError(f"pushgateway {problem}: {self.log_path.read_text()[-2000:]}")

    def samples(self) -> dict[str, float]:
        """Every series it exposes, as ``name{label="value",…}`` (labels sorted) -> value."""
        return samples(httpx.get(f"{self.url}/metrics", timeout=10).text)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self.proc is not None:
            self._log.close()


def samples(text: str) -> dict[str, float]:
    """Series of a Prometheus text exposition: ``name{label="value",…}`` (labels sorted) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[series_key(s.name, s.labels)] = s.value
    return out


def series_key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def sample_names(text: str) -> set[str]:
    """Names of every sample exposed (histograms give _bucket, _sum and _count; counters _total)."""
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}
