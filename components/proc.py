"""What /proc says about a process: its peak resident memory (the distributed refit's workers, the benchmarks)."""

from __future__ import annotations

from pathlib import Path


def peak_rss_kib(pid: int | str = "self") -> int:
    """A process's peak resident memory (VmHWM of /proc/<pid>/status), in KiB; 0 where /proc has none.

    VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child forked from a large
    parent would report the parent's peak; VmHWM belongs to the program the process runs.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
