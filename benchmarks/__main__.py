"""`make bench`: every benchmark in one run, one table, one JSON file (bench-results/bench.json).

Each figure is a ratio against a baseline measured in the same run, since this machine is
shared and absolute times drift. Each section is a module of this package with
``main(out_json) -> figures`` and, optionally, ``rows(figures) -> [(figure, value, target)]``.
BENCH_ONLY=pipeline,serving,columnar,monitoring,loop,faults picks a subset. The faults get a table of
their own (records served, stored, duplicated, and the outcome per fault).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

OUT = Path(os.environ.get("BENCH_OUT", "bench-results"))


def _rows(name: str, r: dict) -> list[tuple[str, str, str, str]]:
    """(benchmark, figure, value, target) rows for the table."""
    if "error" in r:
        return [(name, "error", r["error"][-200:], "")]
    module = __import__(f"benchmarks.{name}", fromlist=["main"])
    if hasattr(module, "rows"):  # a section that prints itself: (figure, value, target) lines
        return [(name, *row) for row in module.rows(r)]
    if name == "pipeline":
        rows = [(name, f"pipeline / direct ({r['rows']} rows)", f"{r['pipeline_over_direct']:.2f}  ({r['pipeline_seconds']} s / {r['direct_seconds']} s)", "<= 1.25"),
                (name, "cached re-run / first run", f"{r['cached_over_first']:.3f}  ({r['cached_seconds']} s)", "<= 0.10")]
        if "steady_cached_over_first" in r:
            rows.append((name, "steady-state cached re-run / first run", f"{r['steady_cached_over_first']:.3f}  ({r['steady_cached_seconds']} s)", "<= 0.10"))
        first = r.get("first_model") or {}
        if first:
            rows.append((name, f"time to first model ({first.get('rows')} rows): flywheel train / hand-written search",
                         f"{first['pipeline_over_hand']:.2f}  ({first['pipeline_seconds']} s / {first['hand_seconds']} s)"
                         if "error" not in first else str(first["error"]), f"<= {first.get('target', 2.0)}"))
            if "cold_tasks_over_hand" in first:
                rows.append((name, "  the same, a new interpreter per task (FLYWHEEL_WARM_TASKS=false)",
                             f"{first['cold_tasks_over_hand']:.2f}  ({first['cold_tasks_seconds']} s)", "(no target)"))
        big = r.get("big") or {}
        if big:
            rows.append((name, f"{big.get('rows')} rows: wall, peak RSS", f"{big.get('seconds')} s, {big.get('peak_rss_gib')} GiB"
                         if "error" not in big else str(big["error"]), "< 4 GiB"))
        return rows
    if name == "monitoring":
        rows = []
        for w in r.get("windows", r.get("results", [])):
            rows.append((name, f"{w.get('rows')} rows: decision / KS, whole pass / KS, peak RSS",
                         f"{w.get('decision_over_ks', float('nan')):.2f} ({w.get('decision_seconds')} s), "
                         f"{w.get('pass_over_ks', float('nan')):.2f} ({w.get('pass_seconds')} s), {w.get('peak_rss_gib', '-')} GiB",
                         "decision <= 1.0 at 1M, <= 2.0 at 100k; < 2 GiB at 10M"))
        return rows or [(name, k, str(v), "") for k, v in r.items() if not isinstance(v, (dict, list))]
    if name == "columnar":
        rows = []
        for shape, s in r.get("shapes", {}).items():
            for fmt in ("arrow", "parquet", "json", "arrow_log_off"):
                f = s.get(fmt) or {}
                value = f"error: {f['error'][:80]}" if "error" in f else \
                    f"{f.get('over_raw', float('nan')):.2f}  ({f.get('rows_per_s', 0):,.0f} vs raw {s.get('raw_rows_per_s', 0):,.0f} rows/s)"
                rows.append((name, f"{shape} /predict_many {fmt}, {r.get('rows_per_request', 0):,} records / raw predict",
                             value, ">= 0.50" if fmt == "arrow" else "reported"))
        return rows
    if name == "loop":
        return [(name, "first drifted request -> new champion answering", f"{r['first_drifted_request_to_new_champion_seconds']} s", ""),
                (name, "requests served / logged / failed", f"{r['served']} / {r['logged']} / {r['failed_requests']}", "logged = served, 0 failed")]
    return [(name, k, str(v), "") for k, v in r.items()]


def main() -> dict:
    from rich.console import Console
    from rich.table import Table

    only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
    results: dict[str, dict] = {}
    for name in ("pipeline", "serving", "columnar", "monitoring", "loop", "faults"):
        if only and name not in only:
            continue
        module = __import__(f"benchmarks.{name}", fromlist=["main"])
        start = time.perf_counter()
        try:
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
