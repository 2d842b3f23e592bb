"""Retrain dataset step: peak memory and store growth against the size of the base table.

For each base size, a store gets a churn-like base table (Parquet, written in chunks), a
champion whose schema was inferred from a sample of it, and the same production traffic
(``labelled`` records logged by the serving prediction log, each with a feedback label). A
fresh interpreter then runs the retrain's data step (``pipelines.triggers.retrain_spec``)
and reports its peak RSS (``VmHWM``), its time and the bytes it added to the store.
The step reads no base row, so its memory and the store's growth follow the labelled rows:
they are the same for every base size (target: <= 1 GiB with a 5M-row base; the store grows
by the new part only).

Runnable as ``python -m benchmarks.retrain_data [out.json]`` (sizes from BENCH_RETRAIN_ROWS,
default ``100000,5000000``); ``main(out_json)`` returns the dict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import save

CHUNK = 500_000
LABELLED = 20_000
STEP = r"""
import json, os, sys, time
from components.proc import peak_rss_kib
from components.settings import load_settings
from pipelines.triggers import champion_spec, retrain_spec
from services.monitoring.trigger import RetrainRequest
from components.store import open_store
settings = load_settings(store=sys.argv[1], model="bench")
store = open_store(settings.store, settings)
def sizes():  # from the file system: reading the objects would put the base in this process's memory
    return {k: os.path.getsize(store.url(k)) for k in store.list("datasets/")}
before = sizes()
request = RetrainRequest(**json.loads(sys.argv[2]))
t0 = time.perf_counter()
spec = retrain_spec(champion_spec(store, "bench"), settings, request, include_feedback=True)
seconds = time.perf_counter() - t0
after = sizes()
added = {k: n for k, n in after.items() if before.get(k) != n}
peak = peak_rss_kib()  # VmHWM, not ru_maxrss (components/proc.py)
print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mib": round(peak / 1024),
                  "added": added, "additions": list(spec.additions)}))
"""


def _world(root: Path, rows: int) -> dict:
    """The base table, the champion and the logged, labelled production traffic; returns the request."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.data import DatasetSpec, infer_schema, normalise
    from components.settings import load_settings
    from components.store import open_store
    from components.synthetic import churn
    from services.monitoring.feedback import part_key
    from testkit.production import log_served, register_champion

    settings = load_settings(store=str(root / "store"), model="bench")
    store = open_store(settings.store, settings)
    base = Path(store.url("datasets/bench/base.parquet"))
    base.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    for i in range(0, rows, CHUNK):
        table = pa.Table.from_pandas(churn(min(CHUNK, rows - i), seed=i // CHUNK), preserve_index=False)
        writer = writer or pq.ParquetWriter(base, table.schema)
        writer.write_table(table)
    writer.close()
    spec = DatasetSpec("datasets/bench/base.parquet", "churned", timestamp="event_time", id_columns=("customer_id",),
                       name="bench")
    sample = pq.ParquetFile(base).read_row_group(0).to_pandas().head(20_000)
    schema = infer_schema(normalise(sample, spec), spec)
    version = register_champion(store, "bench", schema, spec)
    traffic = churn(LABELLED, seed=99, start="2026-03-01", days=7, covariate_shift=1.0)
    log_served(store, "bench", version, schema, traffic.drop(columns=["customer_id", "event_time"]), root / "spill")
    end = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    key = "20261205T100000Z"
    return {"model": "bench", "key": key, "version": version, "window": {"start": None, "end": end.isoformat(), "key": key},
            "reason": "bench", "run_name": f"bench-retrain-{key.lower()}", "_part": part_key("bench", f"bench-retrain-{key.lower()}"),
            "_base_bytes": base.stat().st_size}


def measure(rows: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="flywheel-retrain-bench-") as tmp:
        request = _world(Path(tmp), rows)
        part, base_bytes = request.pop("_part"), request.pop("_base_bytes")
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run([sys.executable, "-c", STEP, str(Path(tmp) / "store"), json.dumps(request)],
                             capture_output=True, text=True, check=True, cwd=root)
        step = json.loads(out.stdout.strip().splitlines()[-1])
    return {"base_rows": rows, "base_bytes": base_bytes, "labelled_rows": LABELLED, **step,
            "store_grew_by_the_part_only": list(step["added"]) == [part]}


def main(out_json: str | None = None) -> dict:
    sizes = [int(n) for n in os.environ.get("BENCH_RETRAIN_ROWS", "100000,5000000").split(",")]
    result = {"sizes": [measure(n) for n in sizes]}
    return save(out_json, result)


def rows(r: dict) -> list[tuple[str, str, str]]:
    """(figure, value, target) lines for `make bench`'s table."""
    return [(f"retrain data step, {s['base_rows']:,}-row base ({s['base_bytes'] / 2**20:.0f} MiB): peak RSS, store growth",
             f"{s['peak_rss_mib']} MiB, +{sum(s['added'].values()) / 2**20:.2f} MiB ({s['seconds']} s)",
             "<= 1 GiB; the new part only" + ("" if s["store_grew_by_the_part_only"] else " - NOT MET"))
            for s in r["sizes"]]


if __name__ == "__main__":
    figures = main(sys.argv[1] if len(sys.argv) > 1 else None)
    print(json.dumps(figures, indent=2))
    for row in rows(figures):
        print(" | ".join(row))
