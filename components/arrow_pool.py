"""pyarrow's memory pool for the monitor pass: jemalloc.

pyarrow 26 allocates through mimalloc by default. Measured on this project's 2-core machine
(a 1M-row x 22-column prediction window, one monitor pass per process, the decision step):
mimalloc's first read took 1.6 s against 0.26 s with the system allocator, and the system
allocator's decision step then ranged from 1.0 to 2.6 s between identical runs (fresh pages
from the kernel for every batch), where jemalloc, which pyarrow's wheels also carry, gave
0.85-0.88 s in four runs out of four. The monitor pass calls ``use_jemalloc`` when it starts;
a user's ``ARROW_DEFAULT_MEMORY_POOL`` wins, and a pyarrow built without jemalloc keeps the
system allocator. Arrow reads ``ARROW_DEFAULT_MEMORY_POOL`` once, when it loads, and what it
allocates inside the Parquet reader follows that choice, not a switch made later: with
``use_jemalloc`` alone a fresh process's decision step over 1M rows took 1.6-2.5 s, with the
variable set before pyarrow loaded 0.78-0.85 s. So a process whose job is the pass (``flywheel
monitor``, the CronJob's entry point) calls ``load_with_jemalloc`` before anything imports
pyarrow. The serving workers keep pyarrow's default: with the system allocator there
the columnar benchmark moved both ways, and with jemalloc an Arrow /predict_many of 100,000
rows took 39-42 ms against 42 ms (log on) and 21-23 ms against 20-21 ms (log off), so
neither showed a gain.
"""

from __future__ import annotations

import os
import sys

POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


def use_jemalloc() -> str:
    """Make jemalloc pyarrow's default pool (unless the user chose one); returns the pool in use."""
    import pyarrow as pa

    if not os.environ.get(POOL_VARIABLE):
        try:
            pool = pa.jemalloc_memory_pool()
        except NotImplementedError:  # a pyarrow built without it
            pool = pa.system_memory_pool()
        pa.set_memory_pool(pool)
    return pa.default_memory_pool().backend_name


def load_with_jemalloc() -> str:
    """Load pyarrow with jemalloc as Arrow's default pool (a user's choice wins); returns the pool.

    The variable is set only while pyarrow loads, so child processes keep their own default.
    When pyarrow is already loaded this is ``use_jemalloc``.
    """
    if "pyarrow" in sys.modules or os.environ.get(POOL_VARIABLE):
        return use_jemalloc()
    os.environ[POOL_VARIABLE] = "jemalloc"
    try:
        import pyarrow as pa

        pa.default_memory_pool()  # Arrow settles its default pool here, while the variable is set
    finally:
        del os.environ[POOL_VARIABLE]
    return use_jemalloc()
