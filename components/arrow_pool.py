"""pyarrow's memory pool for the monitor pass: jemalloc.

pyarrow 26 allocates through mimalloc by default. Measured on this project's 2-core machine
(a 1M-row x 22-column prediction window, one monitor pass per process, the decision step):
mimalloc's first read took 1.6 s against 0.26 s with the system allocator, and the system
allocator's decision step then ranged from 1.0 to 2.6 s between identical runs (fresh pages
from the kernel for every batch), where jemalloc, which pyarrow's wheels also carry, gave
0.85-0.88 s in four runs out of four. The monitor pass calls ``use_jemalloc`` when it starts;
a user's ``ARROW_DEFAULT_MEMORY_POOL`` wins, and a pyarrow built without jemalloc keeps the
system allocator. The serving workers keep pyarrow's default: with the system allocator there
the columnar benchmark moved both ways, and with jemalloc an Arrow /predict_many of 100,000
rows took 39-42 ms against 42 ms (log on) and 21-23 ms against 20-21 ms (log off), so
neither showed a gain.
"""

from __future__ import annotations

import os


def use_jemalloc() -> str:
    """Make jemalloc pyarrow's default pool (unless the user chose one); returns the pool in use."""
    import pyarrow as pa

    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        try:
            pool = pa.jemalloc_memory_pool()
        except NotImplementedError:  # a pyarrow built without it
            pool = pa.system_memory_pool()
        pa.set_memory_pool(pool)
    return pa.default_memory_pool().backend_name
