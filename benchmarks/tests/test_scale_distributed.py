"""The distributed refit row measures at the scale section's size, not a fixed one of its own."""

from __future__ import annotations

import pytest

from benchmarks import scale_distributed


def test_rows_follow_scale_rows_up_to_the_issues_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_DISTRIBUTED_ROWS", raising=False)
    monkeypatch.setenv("SCALE_ROWS", "1000000,5000000,10000000")
    assert scale_distributed.default_rows() == 5_000_000  # 10M in one process alone needs about 8 GiB
    monkeypatch.setenv("SCALE_ROWS", "200000,500000")
    assert scale_distributed.default_rows() == 500_000
    monkeypatch.setenv("SCALE_ROWS", "20000000")
    assert scale_distributed.default_rows() == 20_000_000  # only sizes above the cap: the smallest of them
    monkeypatch.setenv("BENCH_DISTRIBUTED_ROWS", "30000")
    assert scale_distributed.default_rows() == 30_000
