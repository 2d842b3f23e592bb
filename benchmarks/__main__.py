"""`make bench`: every benchmark in one run, one table, one JSON file (bench-results/bench.json).

Each figure is a ratio against a baseline measured in the same run, since this machine is
shared and absolute times drift. Each section is a module of this package with
``main(out_json) -> figures`` and, optionally, ``rows(figures) -> [(figure, value, target)]``.
BENCH_ONLY=pipeline,tuning,serving,columnar,monitoring,loop,faults,scale picks a subset; the scale section's
sizes are SCALE_ROWS (default 200000,500000; the issue's 1000000,5000000,10000000) and SCALE_RETRAIN_ROWS. The faults get a table of
their own (records served, stored, duplicated, and the outcome per fault).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

OUT = Path(os.environ.get("BENCH_OUT", "bench-results"))
SECTIONS = ("pipeline", "tuning", "serving", "columnar", "monitoring", "loop", "faults", "scale")


def _rows(name: str, r: dict) -> list[tuple[str, str, str, str]]:
    """(benchmark, figure, value, target) rows for the table."""
    if "error" in r:
        return [(name, "error", r["error"][-200:], "")]
    module = __import__(f"benchmarks.{name}", fromlist=["main"])
    if hasattr(module, "rows"):  # a section that prints itself: (figure, value, target) lines
        return [(name, *row) for row in module.rows(r)]
    if name == "loop":
        return [(name, "first drifted request -> new champion answering", f"{r['first_drifted_request_to_new_champion_seconds']} s", ""),
                (name, "requests served / logged / failed", f"{r['served']} / {r['logged']} / {r['failed_requests']}", "logged = served, 0 failed")]
    return [(name, k, str(v), "") for k, v in r.items()]


def main() -> dict:
    from rich.console import Console
    from rich.table import Table

    only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
    results: dict[str, dict] = {}
    for name in SECTIONS:
        if only and name not in only:
            continue
        start = time.perf_counter()
        try:
            module = __import__(f"benchmarks.{name}", fromlist=["main"])
            results[name] = module.main(str(OUT / f"{name}.json"))
        except Exception as exc:  # noqa: BLE001 - one failing benchmark must not hide the others' figures; its error is in the table
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=3)}
        results[name]["bench_seconds"] = round(time.perf_counter() - start, 1)
    table = Table(title="Flywheel benchmarks (ratios against a baseline in the same run)")
    for col in ("benchmark", "figure", "value", "target"):
        table.add_column(col)
    for name, r in results.items():
        if name == "faults" and "error" not in r:
            continue
        for row in _rows(name, r):
            table.add_row(*row)
    if table.row_count:
        Console(width=160).print(table)
    if "faults" in results and "error" not in results["faults"]:
        from benchmarks.faults import COLUMNS, table_rows

        faults = Table(title="faults (injected into the real server, S3 server and signals)")
        for col in COLUMNS:
            faults.add_column(col)
        for row in table_rows(results["faults"]):
            faults.add_row(*row)
        Console(width=160).print(faults)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {OUT / 'bench.json'}")
    return results


if __name__ == "__main__":
    main()
