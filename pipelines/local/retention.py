"""The embedded runner's retention rule for its pipeline root (the ``pipeline_root_max_gib`` setting).

kfp.local writes each run's artifacts under ``<root>/<pipeline>-<timestamp>/`` and its cache
entries under ``<root>/.kfp_cache/`` (each names the artifact URIs it reuses). Without a rule,
every uncached run adds about 1.7x its input to the disk, forever. After a run, the oldest run
folders go first until the root fits the budget; the newest run is always kept; a cache entry
that points into a removed folder is removed with it (kfp.local would count it a miss anyway:
a missing artifact file is a cache miss, never a crash).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CACHE = ".kfp_cache"
NOT_RUNS = {CACHE, "logs"}


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def prune(root: Path, max_bytes: int) -> list[Path]:
    """Remove the oldest run folders under ``root`` until the rest fit ``max_bytes`` (the newest always
    stays; 0: no limit) and the cache entries that point into them; returns the folders removed."""
    if max_bytes <= 0 or not root.is_dir():
        return []
    runs = sorted((p for p in root.iterdir() if p.is_dir() and p.name not in NOT_RUNS and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime_ns)
    sizes = {p: _size(p) for p in runs}
    total = sum(sizes.values())
    removed: list[Path] = []
    for run in runs[:-1]:  # oldest first; never the newest
        if total <= max_bytes:
            break
        shutil.rmtree(run, ignore_errors=True)
        total -= sizes[run]
        removed.append(run)
    if removed:
        _drop_cache_entries(root / CACHE, [str(p) for p in removed])
    return removed


def _drop_cache_entries(cache: Path, gone: list[str]) -> None:
    if not cache.is_dir():
        return
    for entry in cache.glob("*.json"):
        try:
            text = entry.read_text()
        except OSError:
            continue
        if any(f'"{g}/' in text or f'"{g}"' in text for g in map(_json_escaped, gone)):
            entry.unlink(missing_ok=True)


def _json_escaped(path: str) -> str:
    return json.dumps(path)[1:-1]


def budget_bytes(gib: float) -> int:
    """The setting's GiB as bytes."""
    return int(gib * (1 << 30))


