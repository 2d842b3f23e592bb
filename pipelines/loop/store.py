"""What `flywheel run` reads back from the store: records landed, versions registered."""

from __future__ import annotations

import time
from typing import Any

from components.registry import Registry
from components.settings import Settings
from components.store import Store
from pipelines.loop.guards import LoopError


def wait_landed(store: Store, model: str, kind: str, expected: int, settings: Settings, timeout: float = 60) -> None:
    """Until ``expected`` records of ``kind`` are in the store (flushes happen every few seconds)."""
    deadline = time.monotonic() + timeout
    while count_logged(store, model, kind) < expected:
        if time.monotonic() > deadline:
            raise LoopError(f"{kind} records did not reach the store within {timeout:.0f} s "
                            f"({count_logged(store, model, kind)} of {expected})")
        time.sleep(min(1.0, settings.log_flush_seconds / 2))


def count_logged(store: Store, model: str, kind: str = "predictions") -> int:
    """Records of ``kind`` in the store, each once whether its hour was compacted or not."""
    from services.monitoring.compaction import live_keys, open_parquet

    return sum(open_parquet(store, key).metadata.num_rows for key in live_keys(store, f"{kind}/{model}"))


def versions_of(reg: Registry) -> list[dict[str, Any]]:
    out = []
    for v in reg.versions():
        m = reg.manifest(v)
        d = reg.decision(v) or {}
        out.append({"version": v, "metric": m.get("primary_metric"), "score": m.get("score"),
                    "promoted": d.get("promoted"), "reason": d.get("reason")})
    return out
