"""Columnar scoring benchmark: /predict_many at 100,000 records per request, against raw model.predict.

Two model shapes, each behind its own real server (`bentoml serve` on loopback, prediction
log on, runtime "auto": ONNX where its check passed):

    linear   a ridge regression on 12 numeric features
    tree     a histogram gradient-boosting classifier on numeric, categorical and date features

The server runs its default worker count (one per CPU). For each shape, the same 100,000
records are posted as an Apache Arrow IPC stream, as Parquet and as JSON, about ``REQUESTS``
times each by ``wrk`` on one connection (one request at a time, after a warm-up that waits until
every worker has its model), as the serving matrix is driven: the Python client it replaces
spent 1 to 2 ms per request of the same two cores on sending a 10 MB body. Served rows/s is
100,000 over the median request time, set against the raw rows/s of the scikit-learn
pipeline's ``model.predict`` on the same frame, in the same run.
Target: Arrow at least 0.5 of raw (Arrow is also measured with the prediction log off).
Run it with ``python -m benchmarks.columnar [out.json]``.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from benchmarks.serving_sides import Running

ROWS = 100_000
REPEATS = int(os.environ.get("BENCH_COLUMNAR_REPEATS", "5"))  # raw predict timings
# About this many requests per format: wrk runs for as long as they take at the warm-up's
# pace (a count, not a fixed duration, so a fast shape does not log gigabytes that the disk
# is still writing back while the next benchmark runs)
REQUESTS = int(os.environ.get("BENCH_COLUMNAR_REQUESTS", "20"))
TARGET = 0.5
# One prebuilt request (body read from the file in args[1], Content-Type in args[2]); done()
# prints the figures as one JSON line for the bench to parse.
WRK_LUA = r'''
local req
init = function(args)
  local f = assert(io.open(args[1], "rb"))
  local body = f:read("*a")
  f:close()
  req = wrk.format("POST", nil, {["Content-Type"] = args[2]}, body)
end
request = function() return req end
done = function(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests": %d, "duration_us": %d, "errors": %d, "mean_us": %d, "p50_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency.mean, latency:percentile(50)))
end
'''


def linear_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(12)])
    frame["y"] = x @ rng.normal(size=12) + rng.normal(0, 0.5, n)
    return frame


def tree_frame(n: int, seed: int = 0) -> pd.DataFrame:
    from components.synthetic import churn

    return churn(n, seed=seed).drop(columns=["customer_id", "event_time"])


SHAPES = {
    "linear": (linear_frame, "y", {"family": "linear", "params": {"alpha": 1.0}, "select": False}),
    "tree": (tree_frame, "churned",
             {"family": "hist_gradient_boosting", "params": {"learning_rate": 0.1, "max_leaf_nodes": 31}, "select": False}),
}


def write_version(root: Path, name: str) -> tuple[Any, pd.DataFrame]:
    """Train and register one version of a shape (ONNX export included); the model and 100k records."""
    from components.data import DatasetSpec, infer_schema
    from components.package import package
    from components.registry import Registry
    from components.split import split
    from components.store import LocalStore
    from components.train import make_model

    make, target, candidate = SHAPES[name]
    frame = make(5000, seed=1)
    schema = infer_schema(frame, DatasetSpec("memory", target))
    train, holdout = split(frame, schema, 0.25, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_model(schema, candidate, 0).fit(train[schema.feature_names], train[target])
        made = package(model, train, holdout, schema, 0)
    files = {**made.files(), "schema.json": schema.to_json().encode(),
             "metrics.json": json.dumps({"task": schema.task, "primary_metric": "none", "holdout": {}}).encode()}
    registry = Registry(LocalStore(root), name)
    version = registry.claim_version()
    registry.write_version(version, files, {})
    registry.promote(version, "benchmark")
    records = make(ROWS, seed=2)[schema.feature_names]
    return model, records


def bodies(records: pd.DataFrame) -> dict[str, tuple[bytes, str]]:
    """The same records as an Arrow IPC stream, a Parquet file and a JSON body."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.formats import ARROW, PARQUET
    from components.predict import records_of

    table = pa.Table.from_pandas(records, preserve_index=False)
    arrow, parquet = io.BytesIO(), io.BytesIO()
    with pa.ipc.new_stream(arrow, table.schema) as w:
        w.write_table(table)
    pq.write_table(table, parquet)
    return {"arrow": (arrow.getvalue(), ARROW), "parquet": (parquet.getvalue(), PARQUET),
            "json": (json.dumps({"records": records_of(records)}).encode(), "application/json")}


def start_server(tmp: Path, store: Path, model: str, logging_on: bool = True) -> Running:
    """`bentoml serve` of the service for one model, in its own process group, once ready."""
    from components.settings import load_settings
    from services.serving import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = load_settings(store=str(store), model=model, spill_dir=str(tmp / f"spill-{model}"),
                             prediction_log=logging_on)
    cmd, env = launch.serve_command(settings, port)
    env["BENTOML_HOME"] = str(tmp / "bentoml-home")
    log = open(tmp / f"server-{model}-{logging_on}.log", "ab")
    proc = subprocess.Popen(cmd, cwd=launch.PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return Running(proc, f"http://127.0.0.1:{port}", log).wait_ready("/readyz", timeout=180)


def served_rows_per_s(url: str, body: bytes, content_type: str, tmp: Path, requests: int = REQUESTS) -> dict[str, Any]:
    """Rows/s of about ``requests`` back-to-back /predict_many calls with this body on one wrk connection (their median)."""
    from benchmarks.serving import generator

    generator()  # wrk is there, or the one-line install hint
    with httpx.Client(timeout=600) as client:
        # every worker process loads the model on its own: warm up until each answers
        deadline, ok, took = time.monotonic() + 180, 0, []
        while ok < 4:
            start = time.perf_counter()
            r = client.post(f"{url}/predict_many", content=body, headers={"content-type": content_type})
            ok = ok + 1 if r.status_code == 200 else 0
            took.append(time.perf_counter() - start)
            if r.status_code not in (200, 503) or time.monotonic() > deadline:
                raise RuntimeError(f"/predict_many answered {r.status_code}: {r.text[:300]}")
            if r.status_code == 503:
                time.sleep(0.5)
    seconds = min(120, max(2, math.ceil(requests * float(np.median(took[-2:])))))  # wrk takes whole seconds
    body_file, script = tmp / "columnar-body", tmp / "columnar.lua"
    body_file.write_bytes(body)
    script.write_text(WRK_LUA)
    cmd = ["wrk", "-t1", "-c1", f"-d{seconds}s", "--timeout", "60s", "-s", str(script), f"{url}/predict_many",
           "--", str(body_file), content_type]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
    match = re.search(r"^WRK_JSON (\{.*\})$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-500:]}")
    raw = json.loads(match.group(1))
    if raw["errors"] or raw["requests"] < 3:
        raise RuntimeError(f"/predict_many under wrk: {raw['errors']} errors in {raw['requests']} requests")
    median = raw["p50_us"] / 1e6
    return {"rows_per_s": ROWS / median, "seconds_median": round(median, 4), "seconds_mean": round(raw["mean_us"] / 1e6, 4),
            "requests": raw["requests"], "body_mib": round(len(body) / 2**20, 2)}


def raw_rows_per_s(model: Any, records: pd.DataFrame, repeats: int) -> float:
    """Rows/s of the scikit-learn pipeline's predict on the same frame, in this process."""
    model.predict(records)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(records)
        times.append(time.perf_counter() - start)
    return ROWS / float(np.median(times))


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    from components.predict import records_of

    return records_of(frame)


def main(out_json_path: str | os.PathLike | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {"rows_per_request": ROWS, "target_arrow_over_raw": TARGET, "shapes": {}}
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-columnar-") as tmp_name:
        tmp = Path(tmp_name)
        store = tmp / "store"
        for name in SHAPES:
            model, records = write_version(store, name)
            payloads = bodies(records)
            server = start_server(tmp, store, name)
            try:
                deadline = time.monotonic() + 180
                while (answer := httpx.post(f"{server.url}/predict_many", json={"records": _records(records.head(1))})
                       ).status_code == 503 and time.monotonic() < deadline:
                    time.sleep(0.5)
                shape: dict[str, Any] = {"runtime": answer.json().get("runtime", "?")}
                raw = raw_rows_per_s(model, records, REPEATS)
                shape["raw_rows_per_s"] = raw
                for fmt, (body, ctype) in payloads.items():
                    try:
                        served = served_rows_per_s(server.url, body, ctype, tmp)
                    except RuntimeError as exc:
                        shape[fmt] = {"error": str(exc)}
                        continue
                    served["over_raw"] = served["rows_per_s"] / raw
                    shape[fmt] = served
                results["shapes"][name] = shape
            finally:
                server.stop()
            # the same Arrow requests with the prediction log off: what scoring itself costs
            server = start_server(tmp, store, name, logging_on=False)
            try:
                served = served_rows_per_s(server.url, *payloads["arrow"], tmp)
                served["over_raw"] = served["rows_per_s"] / shape["raw_rows_per_s"]
                shape["arrow_log_off"] = served
            except RuntimeError as exc:
                shape["arrow_log_off"] = {"error": str(exc)}
            finally:
                server.stop()
    results["meets_target"] = all(s.get("arrow", {}).get("over_raw", 0) >= TARGET for s in results["shapes"].values())
    if out_json_path:
        Path(out_json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json_path).write_text(json.dumps(results, indent=2))
    print(table(results))
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"/predict_many at {results['rows_per_request']:,} records per request (rows/s; ratio to raw model.predict)"]
    for name, s in results["shapes"].items():
        lines.append(f"  {name:<7} raw model.predict {s['raw_rows_per_s']:>12,.0f}   ({s.get('runtime', '')})")
        for fmt in ("arrow", "parquet", "json", "arrow_log_off"):
            f = s.get(fmt, {})
            if "error" in f:
                lines.append(f"  {'':<7} {fmt:<17} error: {f['error'][:120]}")
            elif f:
                lines.append(f"  {'':<7} {fmt:<17} {f['rows_per_s']:>12,.0f}   {f['over_raw']:.2f}x"
                             f"   ({f['body_mib']} MiB body){'   target >= 0.50' if fmt == 'arrow' else ''}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
