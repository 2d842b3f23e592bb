"""Monitoring benchmark: one pass over windows of 100k, 1M and 10M rows x 20 numeric features.

The peer is what a user would run instead: Evidently's own ``DataDriftPreset`` report over the
same window (every row, the same 20 features and the prediction column) against the same
100k-row reference. Matched: each side is a child process started the same way (pyarrow loaded
with jemalloc, as ``flywheel monitor`` starts; the same environment, so the same threads), imports
timed apart, then timed from reading the same Parquet files of the store to its answer (the pass
up to its decision: read, exact statistics, sample, tests, quality, decision, summary.json,
metrics; the preset: read, ``Report.run``). Peak memory is each child's own peak RSS (VmHWM).
Both sides' settings (rows, reference rows, columns, threads, allocator) are printed in the row.

  * decision / Evidently preset (target <= 0.5 at 1M rows) and peak RSS pass / preset
    (target <= 1.0 at 1M); the preset runs up to ``BENCH_MONITOR_EVIDENTLY_ROWS`` (default 1M);
  * decision / KS, the floor: ``scipy.stats.ks_2samp`` over the 20 columns of the full window
    against the reference, on frames already in memory (a different, exact method: the least
    any test on every row costs);
  * pass / KS: the whole pass, including its second step (Evidently reports rendered to HTML
    and the workspace snapshot);
  * peak memory of the pass at 10M rows (target < 2 GiB).

Runnable as ``python -m benchmarks.monitoring [out.json]``; ``main(out_json)`` returns the dict.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import save
from components.data import MODEL_VERSION, PREDICTION, TIME, Column, Schema
from components.registry import Registry
from components.settings import load_settings
from components.store import open_store

SIZES = [int(x) for x in os.environ.get("BENCH_MONITOR_SIZES", "100000,1000000,10000000").split(",")]
EVIDENTLY_ROWS = int(os.environ.get("BENCH_MONITOR_EVIDENTLY_ROWS", "1000000"))  # the preset took minutes at 1M
REFERENCE_ROWS = 100_000
FEATURES = [f"f{i:02d}" for i in range(20)]
PART_ROWS = 1_000_000
SAMPLE_SIZE = int(os.environ.get("BENCH_MONITOR_SAMPLE", "50000"))  # the settings' default
# The machine is shared: each figure is the best of a few runs, the pass and its baseline alike.
REPEATS = int(os.environ.get("BENCH_MONITOR_REPEATS", "2"))
DAY = dt.datetime(2026, 3, 10, tzinfo=dt.UTC)
NOW = DAY + dt.timedelta(days=1)  # with window_minutes=1440 the pass evaluates DAY


def _settings(store: Path, workspace: Path):
    return load_settings(store=str(store), model="bench", window_minutes=1440, min_rows=1000,
                         evidently_workspace=str(workspace), sample_size=SAMPLE_SIZE)


def build_store(root: Path, rows: int) -> Path:
    """A served version (schema, metrics, 100k-row reference) and ``rows`` logged predictions."""
    store_dir = root / f"store-{rows}"
    settings = _settings(store_dir, root / "ws")
    store = open_store(settings.store, settings)
    rng = np.random.default_rng(0)
    ref = pd.DataFrame(rng.normal(size=(REFERENCE_ROWS, len(FEATURES))), columns=FEATURES)
    ref[PREDICTION] = (ref["f00"] > 0).astype("int64")
    ref["_label"] = ref[PREDICTION]
    schema = Schema("y", "classification", [Column(c, "numeric", "float64", 0.0) for c in FEATURES], classes=[0, 1])
    reg = Registry(store, "bench")
    v = reg.claim_version()
    buf = io.BytesIO()
    ref.to_parquet(buf, index=False)
    reg.write_version(v, {"schema.json": schema.to_json().encode(), "reference.parquet": buf.getvalue(),
                          "metrics.json": json.dumps({"task": "classification", "primary_metric": "balanced_accuracy",
                                                      "holdout": {"balanced_accuracy": 0.9}}).encode()}, {})
    reg.promote(v, "benchmark")
    folder = store_dir / "predictions" / "bench" / f"date={DAY.date().isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    start = pd.Timestamp(DAY)
    for i, lo in enumerate(range(0, rows, PART_ROWS)):
        n = min(PART_ROWS, rows - lo)
        x = rng.normal(size=(n, len(FEATURES)))
        x[:, :3] += 0.05  # a small real shift, so the pass has something to find
        micros = int(start.value // 1000) + np.sort(rng.integers(0, 86_000 * 10**6, n))
        cols = {TIME: pa.array(micros, pa.int64()).cast(pa.timestamp("us", "UTC")),
                MODEL_VERSION: pa.array(np.full(n, v))}
        cols.update({c: x[:, j] for j, c in enumerate(FEATURES)})
        cols[PREDICTION] = (x[:, 0] > 0).astype("int64")
        pq.write_table(pa.table(cols), folder / f"part-{i:04d}.parquet", row_group_size=131_072)
    return store_dir


def peak_rss_bytes() -> int:
    """This process's peak RSS since it started its program: VmHWM (components/proc.py), not ru_maxrss.

    Linux keeps ru_maxrss across exec, so a child forked from a parent that holds the 10M-row
    window (the KS baseline) would report the parent's size; VmHWM belongs to the new program.
    """
    from components.proc import peak_rss_kib

    kib = peak_rss_kib()
    if kib:
        return kib * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux (and the caveat above)


def run_pass_child(store_dir: str, workspace: str) -> None:
    """Child process: one pass, then its time and peak memory on stdout (``CHILD`` starts it)."""
    t0 = time.perf_counter()
    import evidently.presets  # imported once per process, as in the CronJob's process
    import evidently.ui.workspace  # noqa: F401

    from services.monitoring.monitor import run_pass

    import_seconds = time.perf_counter() - t0
    settings = _settings(Path(store_dir), Path(workspace))
    store = open_store(settings.store, settings)
    t0 = time.perf_counter()
    s = run_pass(settings, store, None, now=NOW)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "decision_seconds": s.timings["decision_s"],
                      "reports_seconds": s.timings.get("reports_s"), "import_seconds": import_seconds,
                      "max_rss_bytes": peak_rss_bytes(), "status": s.status, "rows": s.rows.get("evaluated"),
                      "drift_share": (s.drift or {}).get("share"), "decision": s.decision.reason,
                      **_process_settings()}))


def run_evidently_child(store_dir: str, workspace: str) -> None:
    """Child process: Evidently's DataDriftPreset on the whole window, as a user runs it; time and peak memory."""
    del workspace  # the preset alone writes nothing
    t0 = time.perf_counter()
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    import_seconds = time.perf_counter() - t0
    store = Path(store_dir)
    t0 = time.perf_counter()
    window = _window(store)
    reference = pd.read_parquet(_reference_file(store), columns=[*FEATURES, PREDICTION])
    dd = DataDefinition(numerical_columns=FEATURES, categorical_columns=[PREDICTION])
    result = Report([DataDriftPreset()]).run(Dataset.from_pandas(window, data_definition=dd),
                                             Dataset.from_pandas(reference, data_definition=dd))
    seconds = time.perf_counter() - t0
    drifted = next((m["value"]["count"] for m in result.dict()["metrics"] if m["metric_name"].startswith("DriftedColumnsCount")),
                   None)
    print(json.dumps({"seconds": seconds, "import_seconds": import_seconds, "max_rss_bytes": peak_rss_bytes(),
                      "rows": len(window), "drifted_columns": drifted, **_process_settings()}))


def _process_settings() -> dict:
    """What the child runs with, as it sees itself: Arrow's pool and the compute-thread variables."""
    import pyarrow as pa

    return {"arrow_pool": pa.default_memory_pool().backend_name,
            "threads": {v: os.environ.get(v, "unset") for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}


# Each child starts as `flywheel monitor` does: pyarrow is loaded with jemalloc before anything else
CHILD = ("import sys; from components.arrow_pool import load_with_jemalloc; load_with_jemalloc(); "
         "from benchmarks import monitoring; getattr(monitoring, sys.argv[1])(sys.argv[2], sys.argv[3])")


def measure(child: str, store_dir: Path, workspace: Path) -> dict:
    """One child (``run_pass_child`` or ``run_evidently_child``) over the window; its JSON and wall time."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, child, str(store_dir), str(workspace)],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - t0
    return result


def _reference_file(store_dir: Path) -> Path:
    return next((store_dir / "registry" / "bench" / "versions").glob("*/reference.parquet"))


def _window(store_dir: Path, columns: list[str] = [*FEATURES, PREDICTION]) -> pd.DataFrame:
    return pq.read_table(store_dir / "predictions" / "bench", columns=columns).to_pandas()


def ks_baseline(store_dir: Path) -> float:
    from scipy.stats import ks_2samp

    window = _window(store_dir, FEATURES)
    ref = pd.read_parquet(_reference_file(store_dir))
    t0 = time.perf_counter()
    for c in FEATURES:
        ks_2samp(ref[c].to_numpy(), window[c].to_numpy())
    return time.perf_counter() - t0


def main(out_json: str | None = None) -> dict:
    results: dict = {"benchmark": "monitoring", "reference_rows": REFERENCE_ROWS, "features": len(FEATURES), "windows": []}
    with tempfile.TemporaryDirectory(prefix="fw-bench-monitor-") as tmp:
        root = Path(tmp)
        for rows in SIZES:
            store_dir = build_store(root, rows)
            runs, presets, ks_runs = [], [], []
            for _ in range(REPEATS):  # interleaved, so every side sees the same load; the best run of each
                runs.append(measure("run_pass_child", store_dir, root / f"ws-{rows}"))
                if rows <= EVIDENTLY_ROWS:
                    presets.append(measure("run_evidently_child", store_dir, root / f"ws-{rows}"))
                ks_runs.append(ks_baseline(store_dir))
            ks = min(ks_runs)
            p = min(runs, key=lambda r: r["decision_seconds"])
            p["seconds"] = min(r["seconds"] for r in runs)
            row = {"rows": rows, "decision_seconds": round(p["decision_seconds"], 3),
                   "decision_over_ks": round(p["decision_seconds"] / ks, 3), "reports_seconds": p["reports_seconds"],
                   "pass_seconds": round(p["seconds"], 3), "pass_process_seconds": round(p["process_seconds"], 3),
                   "import_seconds": round(p["import_seconds"], 3), "sample_size": SAMPLE_SIZE,
                   "ks_full_window_seconds": round(ks, 3), "pass_over_ks": round(p["seconds"] / ks, 3),
                   "peak_rss_gib": round(max(r["max_rss_bytes"] for r in runs) / 2**30, 3), "status": p["status"],
                   "repeats": REPEATS, "rows_evaluated": p["rows"], "drift_share": p["drift_share"],
                   "decision": p["decision"], "pass_settings": {k: p[k] for k in ("arrow_pool", "threads")}}
            if presets:
                e = min(presets, key=lambda r: r["seconds"])
                peak = max(r["max_rss_bytes"] for r in presets)
                row["evidently"] = {"seconds": round(e["seconds"], 3), "import_seconds": round(e["import_seconds"], 3),
                                    "peak_rss_gib": round(peak / 2**30, 3), "rows": e["rows"],
                                    "drifted_columns": e["drifted_columns"], "arrow_pool": e["arrow_pool"],
                                    "threads": e["threads"]}
                row["decision_over_evidently"] = round(p["decision_seconds"] / e["seconds"], 3)
                row["peak_rss_over_evidently"] = round(row["peak_rss_gib"] / row["evidently"]["peak_rss_gib"], 3)
                row["mismatches"] = mismatches(row)
            results["windows"].append(row)
            print(f"{rows:>10,} rows: decision {row['decision_seconds']:.2f} s, whole pass {row['pass_seconds']:.2f} s, "
                  f"KS full window {ks:.2f} s, peak RSS {row['peak_rss_gib']:.2f} GiB"
                  + (f"; Evidently preset {row['evidently']['seconds']:.1f} s, {row['evidently']['peak_rss_gib']:.2f} GiB"
                     if "evidently" in row else ""), flush=True)
            shutil.rmtree(store_dir, ignore_errors=True)
    by_rows = {w["rows"]: w for w in results["windows"]}
    at_1m = by_rows.get(1_000_000, {})
    results["targets"] = {
        "decision_over_evidently_at_1M_le_0.5": at_1m.get("decision_over_evidently"),
        "peak_rss_over_evidently_at_1M_le_1.0": at_1m.get("peak_rss_over_evidently"),
        "peak_rss_gib_at_10M_lt_2": by_rows.get(10_000_000, {}).get("peak_rss_gib"),
    }
    return save(out_json, results)


def mismatches(row: dict) -> list[str]:
    """What differs between the pass's child and the preset's: rows read, allocator, thread settings."""
    e, p = row["evidently"], row["pass_settings"]
    out = [f"rows pass={row['rows_evaluated']} | preset={e['rows']}"] if row["rows_evaluated"] != e["rows"] else []
    return out + [f"{k} pass={p[k]} | preset={e[k]}" for k in ("arrow_pool", "threads") if p[k] != e[k]]


def rows(r: dict) -> list[tuple[str, str, str]]:
    """(figure, value, target) lines for the ``make bench`` table, with both sides' settings."""
    out = []
    for w in r["windows"]:
        if "evidently" in w:
            e, p = w["evidently"], w["pass_settings"]
            threads = "/".join(dict.fromkeys(p["threads"].values())) + "|" + "/".join(dict.fromkeys(e["threads"].values()))
            settings = (("UNMATCHED (" + "; ".join(w["mismatches"]) + "): " if w["mismatches"] else "matched: ")
                        + f"rows {w['rows_evaluated']:,}|{e['rows']:,}, reference {r['reference_rows']:,} both, "
                        f"{r['features']} features + prediction both, Arrow pool {p['arrow_pool']}|{e['arrow_pool']}, "
                        f"threads {threads}, imports excluded both")
            out.append((f"{w['rows']:,} rows: pass decision | Evidently DataDriftPreset report",
                        f"{w['decision_over_evidently']:.2f}  ({w['decision_seconds']} s | {e['seconds']} s); "
                        f"peak RSS {w['peak_rss_over_evidently']:.2f}  ({w['peak_rss_gib']} | {e['peak_rss_gib']} GiB); "
                        f"{settings}", "<= 0.5, memory <= 1.0 at 1M"))
        out.append((f"{w['rows']:,} rows: pass decision | exact KS on every row (the floor)",
                    f"{w['decision_over_ks']:.2f}  ({w['decision_seconds']} s | {w['ks_full_window_seconds']} s, KS on "
                    f"frames in memory); whole pass {w['pass_over_ks']:.2f}  ({w['pass_seconds']} s); peak RSS "
                    f"{w['peak_rss_gib']} GiB", "reported; < 2 GiB at 10M"))
    return out


if __name__ == "__main__":
    for figure, value, target in rows(main(sys.argv[1] if len(sys.argv) > 1 else "bench-results/monitoring.json")):
        print(f"{figure}: {value}   [{target}]")
