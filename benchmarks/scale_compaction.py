"""Scale: a monitoring pass over a day of prediction logs from 20 workers, before and after compaction.

The store gets what the serving workers write in a day: a prediction part per worker per flush
interval (rows per part Poisson-distributed, median 18, as measured at 10 requests/s with the
2 s flush), named as the log names them, and a feedback part per worker every 10 minutes
(a quarter of the predictions labelled). Three fresh interpreters then run, one after the other:

  1. a monitoring pass over the day (``run_pass``, a 1440-minute window, no reports, no compaction);
  2. the compaction the monitor runs after a pass (``compaction.compact``, both logs);
  3. the same pass again, on the compacted logs (the first pass's records removed, so both
     passes start alike).

Each reports its wall time and peak RSS (VmHWM); the passes also the log objects they read
(``read``/``read_versioned`` of keys under ``predictions/`` and ``feedback/``: the store is
wrapped, so a local store is read as S3 is, one GET per object) and rows per object. The
counts (rows in the window and per version, labelled rows joined from feedback, each column's
statistics) must be identical. Targets: >= 10,000 rows per object after compaction, counts equal.

Default: 2 hours of the day (``BENCH_COMPACTION_HOURS``) with a part every 20 s per worker
(``BENCH_COMPACTION_FLUSH_SECONDS``): 7,200 prediction parts and 65,000 rows an hour, so rows
per object after compaction are those of a busy hour (a compacted hour is two objects per log,
its file and its manifest: rows per object after is about rows per hour / 2, whatever the
number of hours; before, it is the rows of a part, whatever the hours too). ``BENCH_COMPACTION_HOURS=24
BENCH_COMPACTION_FLUSH_SECONDS=2`` is the issue's full day (864,000 prediction parts, hours to
build here); ``BENCH_COMPACTION_WORKERS`` (20) sets the workers. Runnable as
``python -m benchmarks.scale_compaction [out.json]``; ``scale_compaction()`` returns the figures,
``rows(figures)`` the table's (figure, value, target) lines.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import save

MODEL = "bench"
DAY = dt.datetime(2026, 3, 10, tzinfo=dt.UTC)
NOW = DAY + dt.timedelta(days=1, hours=1)  # every hour of the day closed; the pass evaluates DAY
NUMERIC = [f"n{i}" for i in range(8)]
CATEGORIES = {"plan": ["basic", "plus", "pro"], "region": ["north", "south", "east", "west"], "channel": ["web", "app", "shop"]}
MEDIAN_ROWS = 18
FEEDBACK_SECONDS = 600
LABEL_SHARE = 0.25
LOGS = ("predictions", "feedback")


def _settings(store: Path) -> Any:
    from components.settings import load_settings

    return load_settings(store=str(store), model=MODEL, window_minutes=1440, min_rows=1000, monitor_reports="never",
                         log_compaction=False, evidently_workspace="", sample_size=20_000)


def build_store(store_dir: Path, workers: int, hours: int, flush_seconds: float, seed: int = 0) -> dict[str, int]:
    """A served version (schema, metrics, reference) and a day of small log parts; returns what was written."""
    from components.data import LABEL, MODEL_VERSION, PREDICTION, REQUEST_ID, TIME, Column, Schema
    from components.registry import Registry
    from components.store import open_store
    from services.serving.log_encoding import part_name

    store = open_store(str(store_dir), _settings(store_dir))
    rng = np.random.default_rng(seed)
    features = [Column(c, "numeric", "float64", 0.0) for c in NUMERIC]
    features += [Column(c, "categorical", "object", 0.0, categories=v) for c, v in CATEGORIES.items()]
    schema = Schema("churned", "classification", features, classes=[0, 1])
    reference = _frame(rng, 20_000)
    reference[PREDICTION] = (reference["n0"] > 0).astype("int64")
    reference[LABEL] = reference[PREDICTION]
    reg = Registry(store, MODEL)
    version = reg.claim_version()
    buf = io.BytesIO()
    reference.to_parquet(buf, index=False)
    reg.write_version(version, {"schema.json": schema.to_json().encode(), "reference.parquet": buf.getvalue(),
                                "metrics.json": json.dumps({"task": "classification", "primary_metric": "balanced_accuracy",
                                                            "holdout": {"balanced_accuracy": 0.8}}).encode()}, {})
    reg.promote(version, "benchmark")
    written = {"prediction_parts": 0, "prediction_rows": 0, "feedback_parts": 0, "feedback_rows": 0}
    for w in range(workers):
        labels: list[tuple[str, int]] = []
        next_feedback = FEEDBACK_SECONDS
        t = float(rng.uniform(0, flush_seconds))
        while t < hours * 3600:
            n = max(1, int(rng.poisson(MEDIAN_ROWS)))
            since = DAY.timestamp() + t
            frame = _frame(rng, n)
            ids = [f"{w:02d}{since:.3f}{i:04d}" for i in range(n)]
            table = pa.table({REQUEST_ID: pa.array(ids, pa.string()),
                              TIME: pa.array(np.full(n, int(since * 1e9)), pa.timestamp("ns", "UTC")),
                              MODEL_VERSION: pa.array([version] * n, pa.string()),
                              **{c: pa.array(frame[c]) for c in frame.columns},
                              PREDICTION: pa.array((frame["n0"] > 0).astype("int64"))})
            day = dt.datetime.fromtimestamp(since, dt.UTC).strftime("%Y-%m-%d")
            _write(store, f"predictions/{MODEL}/date={day}/{part_name(since, 'parquet')}", table)
            written["prediction_parts"] += 1
            written["prediction_rows"] += n
            labels += [(i, int(p)) for i, p in zip(ids, (frame["n0"] > 0).astype("int64")) if rng.random() < LABEL_SHARE]
            t += flush_seconds
            if t >= next_feedback or t >= hours * 3600:  # labels arrive in a part per worker every 10 minutes
                when = DAY.timestamp() + min(t, next_feedback)
                if labels:
                    day = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%d")
                    fb = pa.table({REQUEST_ID: pa.array([i for i, _ in labels], pa.string()),
                                   TIME: pa.array(np.full(len(labels), int(when * 1e9)), pa.timestamp("ns", "UTC")),
                                   LABEL: pa.array([y for _, y in labels], pa.int64())})
                    _write(store, f"feedback/{MODEL}/date={day}/{part_name(when, 'parquet')}", fb)
                    written["feedback_parts"] += 1
                    written["feedback_rows"] += len(labels)
                labels = []
                next_feedback += FEEDBACK_SECONDS
    return written


def _write(store: Any, key: str, table: pa.Table) -> None:
    path = Path(store.url(key))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _frame(rng: np.random.Generator, n: int) -> Any:
    import pandas as pd

    frame = pd.DataFrame(rng.normal(size=(n, len(NUMERIC))), columns=NUMERIC)
    for c, values in CATEGORIES.items():
        frame[c] = rng.choice(values, n)
    return frame


class Counting:
    """A store that counts the log objects read (each a GET on S3); everything else passes through."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.uri, self.reads = inner, inner.uri, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _count(self, key: str) -> None:
        if key.startswith(("predictions/", "feedback/")):
            self.reads += 1

    def read(self, key: str) -> bytes:
        self._count(key)
        return self.inner.read(key)

    def read_versioned(self, key: str) -> Any:
        self._count(key)
        return self.inner.read_versioned(key)


def _peak_rss_mib() -> int:
    from benchmarks.monitoring import peak_rss_bytes

    return round(peak_rss_bytes() / 2**20)


def pass_child(store_dir: str) -> None:
    """Child process: one monitoring pass over the day; its figures as JSON on stdout."""
    from components.store import open_store
    from services.monitoring.monitor import run_pass

    settings = _settings(Path(store_dir))
    store = Counting(open_store(settings.store, settings))
    t0 = time.perf_counter()
    s = run_pass(settings, store, None, now=NOW)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    columns = {c: {k: (round(v, 9) if isinstance(v, float) else v) for k, v in r.items()} for c, r in s.columns.items()}
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mib": _peak_rss_mib(), "objects_read": store.reads,
                      "status": s.status, "counts": {"in_window": s.rows.get("in_window"), "by_version": s.rows.get("by_version"),
                                                     "labelled": s.rows.get("labelled"), "columns": columns},
                      "files_skipped": len(s.files.get("skipped", []))}))


def compact_child(store_dir: str) -> None:
    """Child process: the compaction the monitor runs after a pass, over both logs."""
    from components.store import open_store
    from services.monitoring.compaction import compact

    settings = _settings(Path(store_dir))
    store = open_store(settings.store, settings)
    t0 = time.perf_counter()
    done = [compact(store, f"{kind}/{MODEL}", NOW.timestamp(), settings.log_compaction_grace_minutes * 60) for kind in LOGS]
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mib": _peak_rss_mib(),
                      "hours": sum(d.hours for d in done), "parts": sum(d.parts for d in done),
                      "errors": [e for d in done for e in d.errors]}))


CHILD = ("import sys; from components.arrow_pool import load_with_jemalloc; load_with_jemalloc(); "
         "from benchmarks import scale_compaction; getattr(scale_compaction, sys.argv[1])(sys.argv[2])")


def _child(name: str, store_dir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, name, str(store_dir)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(time.perf_counter() - t0, 2)
    return result


def scale_compaction(workers: int | None = None, hours: int | None = None, flush_seconds: float | None = None) -> dict[str, Any]:
    """Build the day's logs, then measure a pass, the compaction and the pass again (module docstring)."""
    workers = workers or int(os.environ.get("BENCH_COMPACTION_WORKERS", "20"))
    hours = hours or int(os.environ.get("BENCH_COMPACTION_HOURS", "2"))
    flush_seconds = flush_seconds or float(os.environ.get("BENCH_COMPACTION_FLUSH_SECONDS", "20"))
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-compaction-") as tmp:
        store_dir = Path(tmp) / "store"
        t0 = time.perf_counter()
        written = build_store(store_dir, workers, hours, flush_seconds)
        build_seconds = round(time.perf_counter() - t0, 1)
        before = _child("pass_child", store_dir)
        shutil.rmtree(store_dir / "monitoring")  # the second pass starts as the first did
        compaction = _child("compact_child", store_dir)
        after = _child("pass_child", store_dir)
    rows = written["prediction_rows"] + written["feedback_rows"]
    return {"workers": workers, "hours": hours, "flush_seconds": flush_seconds, "written": written,
            "build_seconds": build_seconds, "before": before, "compaction": compaction, "after": after,
            "rows_per_object_before": round(rows / max(before["objects_read"], 1)),
            "rows_per_object_after": round(rows / max(after["objects_read"], 1)),
            "counts_identical": before["counts"] == after["counts"] and before["status"] == after["status"] == "ok"}


def rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, target) lines for the scale section's table."""
    w = r["written"]
    setting = f"{r['workers']} workers x {r['hours']} h, a part per {r['flush_seconds']:g} s"
    return [
        ("log parts written (predictions / feedback)", f"{w['prediction_parts']} / {w['feedback_parts']} ({setting})", ""),
        ("pass before compaction: objects read, rows/object",
         f"{r['before']['objects_read']}, {r['rows_per_object_before']}", ""),
        ("pass after compaction: objects read, rows/object",
         f"{r['after']['objects_read']}, {r['rows_per_object_after']}", ">= 10,000 rows/object"),
        ("pass wall time / peak RSS, before -> after",
         f"{r['before']['seconds']} s / {r['before']['peak_rss_mib']} MiB -> {r['after']['seconds']} s / "
         f"{r['after']['peak_rss_mib']} MiB", ""),
        ("compaction: hours, parts, wall time, peak RSS",
         f"{r['compaction']['hours']}, {r['compaction']['parts']}, {r['compaction']['seconds']} s, "
         f"{r['compaction']['peak_rss_mib']} MiB", "no errors" if not r["compaction"]["errors"] else "; ".join(r["compaction"]["errors"])),
        ("counts before = after (rows, labelled, columns)", str(r["counts_identical"]), "True"),
    ]


def main(out_json: str | None = None) -> dict[str, Any]:
    """Run the benchmark; write its figures to ``out_json`` when given."""
    result = scale_compaction()
    return save(out_json, result)


if __name__ == "__main__":
    figures = main(sys.argv[1] if len(sys.argv) > 1 else None)
    for line in rows(figures):
        print(" | ".join(line))
