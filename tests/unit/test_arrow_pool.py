"""The monitor allocates Arrow memory with jemalloc (components/arrow_pool.py)."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = ("import pyarrow as pa; from components.arrow_pool import use_jemalloc; "
        "before = pa.default_memory_pool().backend_name; print(before, use_jemalloc())")


def _run(code: str, **env: str) -> list[str]:
    """What ``code`` prints in a fresh interpreter, with ``env`` and no ARROW_DEFAULT_MEMORY_POOL of ours."""
    base = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**base, **env})
    return out.stdout.split()


def _pools(**env: str) -> list[str]:
    return _run(CODE, **env)


def test_jemalloc_replaces_pyarrows_default_pool() -> None:
    before, after = _pools()
    assert before != "jemalloc"  # the check sees a change: pyarrow's own default is another allocator
    assert after == "jemalloc"


def test_a_pool_the_user_chose_is_kept() -> None:
    assert _pools(ARROW_DEFAULT_MEMORY_POOL="system") == ["system", "system"]


LOAD = ("import os; from components.arrow_pool import load_with_jemalloc; pool = load_with_jemalloc(); "
        "import pyarrow as pa; print(pool, pa.default_memory_pool().backend_name, os.environ.get('ARROW_DEFAULT_MEMORY_POOL', '-'))")


def _loaded(**env: str) -> list[str]:
    return _run(LOAD, **env)


def test_the_monitor_process_loads_pyarrow_with_jemalloc_and_leaves_the_variable_unset() -> None:
    """Set before pyarrow loads, so Arrow's own allocations use it; unset after, so child processes keep their default."""
    assert _loaded() == ["jemalloc", "jemalloc", "-"]


def test_load_keeps_a_pool_the_user_chose() -> None:
    assert _loaded(ARROW_DEFAULT_MEMORY_POOL="system") == ["system", "system", "system"]


def test_flywheel_monitor_loads_pyarrow_with_jemalloc_before_anything_else() -> None:
    import inspect

    from pipelines import cli

    body = inspect.getsource(cli.monitor)
    assert body.index("load_with_jemalloc()") < body.index("from components.data import")
