"""The monitor allocates Arrow memory with the system allocator (components/arrow_pool.py)."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = ("import pyarrow as pa; from components.arrow_pool import use_system_allocator; "
        "before = pa.default_memory_pool().backend_name; print(before, use_system_allocator())")


def _pools(**env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True, env={**base, **env})
    return out.stdout.split()


def test_the_system_allocator_replaces_pyarrows_default_pool() -> None:
    before, after = _pools()
    assert before != "system"  # the check sees a change: pyarrow's own default is another allocator
    assert after == "system"


def test_a_pool_the_user_chose_is_kept() -> None:
    assert _pools(ARROW_DEFAULT_MEMORY_POOL="mimalloc") == ["mimalloc", "mimalloc"]
