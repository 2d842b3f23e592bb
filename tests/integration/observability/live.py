"""A real Prometheus Pushgateway on a free loopback port, and reading metrics the way Prometheus does."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from components.net import free_port
from services.serving.launch import ServerNotReady, ServerProcess


class Pushgateway(ServerProcess):
    """`prometheus-pushgateway` (Debian package) without persistence, on a free loopback port."""

    def __init__(self, binary: str, log_path: Path) -> None:
        super().__init__([], dict(os.environ), 0, log_path)
        self.binary = binary

    def start(self, timeout: float = 30) -> Pushgateway:
        self.port = free_port()
        self.cmd = [self.binary, f"--web.listen-address=127.0.0.1:{self.port}", "--persistence.file="]
        super().start()
        try:
            self.wait_ready("/-/ready", timeout, interval=0.2)
        except ServerNotReady as exc:
            raise RuntimeError(f"pushgateway: {exc}: {exc.tail[-2000:]}") from None
        return self

    def samples(self) -> dict[str, float]:
        """Every series it exposes, as ``name{label="value",…}`` (labels sorted) -> value."""
        return samples(httpx.get(f"{self.url}/metrics", timeout=10).text)


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
