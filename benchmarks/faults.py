"""Fault benchmark: every fault of testkit/faults.py on the real parts, as the "faults" table.

For each fault: records served, records in the store, duplicates, and the outcome. The same
functions are the fault tests (tests/e2e/serving/test_faults.py), so the table and the tests
cannot disagree. BENCH_FAULTS=sigterm,sigkill,... picks some (the functions' names).
Run alone with ``python -m benchmarks.faults [out.json]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import save

COLUMNS = ("fault", "served", "stored", "duplicates", "outcome", "target")


def main(out: str | None = None) -> dict[str, Any]:
    """Run the faults; returns {"faults": [row, ...], "all_ok": bool} and writes it to ``out``."""
    import testkit.pipeline_faults  # noqa: F401 - registers the pipeline and monitor faults
    from testkit.faults import run_all

    only = set(filter(None, os.environ.get("BENCH_FAULTS", "").split(",")))
    with tempfile.TemporaryDirectory(prefix="flywheel-faults-") as tmp:
        rows = [r.to_dict() for r in run_all(Path(tmp), only or None)]
    result = {"faults": rows, "all_ok": all(r["ok"] for r in rows)}
    return save(out, result, default=str)


def table_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows of the faults table (COLUMNS), one per fault."""
    rows = []
    for r in result.get("faults", []):
        target = (f"lost <= {r['allowed_loss']}, 0 duplicates" if r.get("allowed_loss")
                  else "served = stored, 0 duplicates" if r.get("served") is not None else "")
        mark = "ok" if r["ok"] else "FAILED"
        rows.append((r["fault"], _n(r.get("served")), _n(r.get("stored")), _n(r.get("duplicates")),
                     f"{mark}: {r['outcome']}", target))
    return rows


def _n(v: Any) -> str:
    return "-" if v is None else str(v)


if __name__ == "__main__":
    res = main(sys.argv[1] if len(sys.argv) > 1 else None)
    for row in table_rows(res):
        print(" | ".join(row))
