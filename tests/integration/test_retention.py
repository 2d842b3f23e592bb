"""The pipeline root's retention rule (pipelines/local/retention.py): uncached runs do not fill the disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipelines.local.retention import budget_bytes, prune


def _run(root: Path, name: str, size: int, age: int) -> Path:
    folder = root / name / "ingest"
    folder.mkdir(parents=True)
    (folder / "dataset").write_bytes(b"x" * size)
    os.utime(root / name, ns=(age, age))
    return folder / "dataset"


def test_the_oldest_runs_go_until_the_root_fits_and_their_cache_entries_with_them(tmp_path):
    old = _run(tmp_path, "flywheel-training-1", 4000, 1_000_000_000)
    mid = _run(tmp_path, "flywheel-training-2", 4000, 2_000_000_000)
    new = _run(tmp_path, "flywheel-training-3", 4000, 3_000_000_000)
    (tmp_path / ".kfp_cache").mkdir()
    stale = tmp_path / ".kfp_cache" / "a.json"
    stale.write_text(json.dumps({"dataset": {"uri": str(old)}}))
    kept = tmp_path / ".kfp_cache" / "b.json"
    kept.write_text(json.dumps({"dataset": {"uri": str(mid)}}))

    removed = prune(tmp_path, 9000)

    assert removed == [tmp_path / "flywheel-training-1"]
    assert not old.exists() and mid.exists() and new.exists()
    assert not stale.exists() and kept.exists()


def test_the_newest_run_stays_however_large_and_zero_keeps_everything(tmp_path):
    _run(tmp_path, "flywheel-training-1", 4000, 1_000_000_000)
    newest = _run(tmp_path, "flywheel-training-2", 8000, 2_000_000_000)
    assert prune(tmp_path, 0) == []
    assert prune(tmp_path, 100) == [tmp_path / "flywheel-training-1"]
    assert newest.exists() and budget_bytes(1.5) == 1_610_612_736
