"""pyarrow's memory pool for Flywheel's processes: the system allocator.

pyarrow 26 allocates through mimalloc by default. Measured on this project's 2-core machine,
reading a 1M-row x 22-column prediction window took 1.6 s on mimalloc's first use against
0.26 s with the system allocator, and 0.77 / 0.49 s against 0.22 / 0.12 s on the next two
reads (``ARROW_DEFAULT_MEMORY_POOL=system`` vs the default, same files, same process shape).
The monitor pass calls ``use_system_allocator`` when it starts; a user's
``ARROW_DEFAULT_MEMORY_POOL`` wins. The serving workers keep pyarrow's default: with the
system allocator there the columnar benchmark moved both ways (tree Arrow 0.65 -> 0.59,
linear Parquet 0.19 -> 0.11, tree JSON 0.15 -> 0.21 of raw predict), so no gain was shown.
"""

from __future__ import annotations

import os


def use_system_allocator() -> str:
    """Make the system allocator pyarrow's default pool (unless the user chose one); returns the pool in use."""
    import pyarrow as pa

    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        pa.set_memory_pool(pa.system_memory_pool())
    return pa.default_memory_pool().backend_name
