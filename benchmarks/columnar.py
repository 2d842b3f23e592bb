"""Columnar scoring benchmark: /predict_many at 100,000 records per request, against the served runtime's own predict.

Two model shapes, each behind its own real server (`bentoml serve` on loopback, prediction
log on, runtime "auto": ONNX where its check passed):

    linear   a ridge regression on 12 numeric features
    tree     a histogram gradient-boosting classifier on numeric and categorical features

Matched: one request at a time against one predict call at a time. The server runs one worker
(``serving_workers=1``); the raw side is one process that loads the same version the way a
worker does (``load_version``: the same runtime, ONNX where the server serves ONNX) and times
that runtime's ``predict`` on the same 100,000 records, with the same thread caps and heap pad
as the server's worker (``flywheel serve``'s environment). Both sides' settings are read from
the running processes (the worker's /proc environ; the raw process reports its own) and printed.

The transport ceiling: a bare ASGI app on uvicorn (one process, the same environment) that reads
the same Arrow body and answers the service's own Arrow answer to it, with no framework, no
validation, no model and no log. Its rows/s over raw is the most any server can reach on this
HTTP stack with these bodies. A server that reads a request before it predicts it has a share of
at most raw / (ceiling + raw): below the target when moving the bytes takes longer than predicting them.
The raw process also times, with the service's own functions, the rest of the worker's work for one
such request: decoding, validating, numbering and answering it (on the request's path), and its log
part (encode its records with their predictions, write the spill part: the log thread's). Two more
bounds follow (``bounds``): the request's path one step after another with the log off, and, with
the log on, every part's CPU spread without loss over the machine's cores.

For each shape, the same records are posted as an Apache Arrow IPC stream, as Parquet and as
JSON, about ``REQUESTS`` times each by ``wrk`` on one connection (after a warm-up), as the serving
matrix is driven. Served rows/s is 100,000 over the median request time, set against the raw
rows/s (100,000 over the median of ``REPEATS`` predict calls), in the same run.
Target: Arrow at least 0.5 of raw (Arrow is also measured with the prediction log off).
Run it with ``python -m benchmarks.columnar [out.json]``.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
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

from benchmarks import save
from benchmarks.serving_sides import compact_env, matched_env, server_settings, side_settings, start_ceiling, start_service
from components.model_runtime import records_of

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


def write_version(root: Path, name: str) -> pd.DataFrame:
    """Train and register one version of a shape (ONNX export included); 100k records to score."""
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
    return make(ROWS, seed=2)[schema.feature_names]


def bodies(records: pd.DataFrame) -> dict[str, tuple[bytes, str]]:
    """The same records as an Arrow IPC stream, a Parquet file and a JSON body."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.formats import ARROW, PARQUET

    table = pa.Table.from_pandas(records, preserve_index=False)
    arrow, parquet = io.BytesIO(), io.BytesIO()
    with pa.ipc.new_stream(arrow, table.schema) as w:
        w.write_table(table)
    pq.write_table(table, parquet)
    return {"arrow": (arrow.getvalue(), ARROW), "parquet": (parquet.getvalue(), PARQUET),
            "json": (json.dumps({"records": records_of(records)}).encode(), "application/json")}


def served_rows_per_s(url: str, body: bytes, content_type: str, tmp: Path, requests: int = REQUESTS) -> dict[str, Any]:
    """Rows/s of about ``requests`` back-to-back /predict_many calls with this body on one wrk connection (their median)."""
    from benchmarks.serving import generator

    generator()  # wrk is there, or the one-line install hint
    with httpx.Client(timeout=600) as client:
        # warm up: four answers in a row (a 503 while the worker still loads its model)
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


# The raw side: one process that loads the version as a serving worker does and times its runtime.
RAW = """
import json, os, sys, time
import pandas as pd
from components.registry import Registry
from components.store import LocalStore
from components.model_runtime import load_version

store, model, records_file, repeats, prefer_onnx = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
registry = Registry(LocalStore(store), model)
loaded = load_version(registry, registry.champion().version, prefer_onnx=prefer_onnx)
runtime = loaded.runtime
records = pd.read_parquet(records_file)
runtime.predict(records)
times = []
for _ in range(repeats):
    start = time.perf_counter()
    values = runtime.predict(records)
    times.append(time.perf_counter() - start)

# what the server does to log the same request: its log columns, encoded, and the spill part written
import tempfile
from pathlib import Path
from services.serving.log_encoding import encode_records, parts_of
from services.serving.service import log_columns, request_id_array, request_ids
from services.serving.spill import write_part
features = {c: records[c].to_numpy() for c in records.columns}
columns = log_columns(loaded.version, request_id_array(len(records)), features, None, values.values, values.proba)
log_times = []
with tempfile.TemporaryDirectory() as spill:
    for _ in range(repeats):
        start = time.perf_counter()
        batches, lines = encode_records(columns, time.time(), loaded.log_types)
        for part in parts_of(f"predictions/{model}", batches, lines, lambda day, since: f"quarantine/{day}"):
            write_part(Path(spill) / part.key, part)
        log_times.append(time.perf_counter() - start)

# the rest of the worker's own work for the same request, besides predicting and logging it: read
# the Arrow body, validate it, number its records and encode the answer (the service's functions)
from components.formats import read_frame, write_columns
body = open(sys.argv[7], "rb").read()
work_times = []
for _ in range(repeats):
    start = time.perf_counter()
    checked = loaded.validator.validate_frame(read_frame(body, "arrow"))
    write_columns({"request_id": request_ids(len(checked)), "prediction": values.values}, None, "arrow")
    work_times.append(time.perf_counter() - start)
print(json.dumps({"runtime": runtime.name, "seconds": times, "log_part_seconds": log_times, "request_work_seconds": work_times,
                  "env": {k: os.environ.get(k) for k in sys.argv[6].split(",")}}))
"""


def raw_rows_per_s(tmp: Path, store: Path, model: str, records: pd.DataFrame, arrow: bytes, repeats: int) -> dict[str, Any]:
    """Rows/s of the served runtime's predict on the records, in one process set up as the server's worker.

    Beside it, in the same process: the worker's log part and its other work for the ``arrow`` body.
    """
    from services.serving.launch import PROJECT_ROOT

    settings = server_settings(tmp, store, model, 1)
    env = matched_env(settings)
    records_file = tmp / f"records-{model}.parquet"
    records.to_parquet(records_file, index=False)
    body_file = tmp / f"body-{model}.arrow"
    body_file.write_bytes(arrow)
    argv = [str(store), model, str(records_file), str(repeats), "1" if settings.serving_runtime != "sklearn" else "0",
            ",".join(env), str(body_file)]
    pythonpath = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", RAW, *argv], capture_output=True, text=True, cwd=PROJECT_ROOT,
                         env={**os.environ, **env, "PYTHONPATH": pythonpath}, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"raw predict of {model} failed: {out.stderr.strip()[-500:]}")
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    median = float(np.median(raw["seconds"]))
    return {"rows_per_s": ROWS / median, "seconds_median": round(median, 4), "runtime": raw["runtime"],
            "processes": 1, "env": raw["env"], "log_part_seconds": round(float(np.median(raw["log_part_seconds"])), 4),
            "request_work_seconds": round(float(np.median(raw["request_work_seconds"])), 4)}


def main(out_json_path: str | os.PathLike | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {"rows_per_request": ROWS, "target_arrow_over_raw": TARGET, "shapes": {}}
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-columnar-") as tmp_name:
        tmp = Path(tmp_name)
        store = tmp / "store"
        for name in SHAPES:
            records = write_version(store, name)
            payloads = bodies(records)
            raw = raw_rows_per_s(tmp, store, name, records, payloads["arrow"][0], REPEATS)
            shape: dict[str, Any] = {"raw": raw}
            for logging_on in (True, False):  # off: the same Arrow requests, what scoring itself costs
                server = start_service(tmp, store, name, 1, prediction_log=logging_on)
                try:
                    answer = httpx.post(f"{server.url}/predict_many", json={"records": records_of(records.head(1))},
                                        timeout=60)
                    shape.setdefault("server", side_settings(server, answer.json().get("runtime", "?")))
                    for fmt, (body, ctype) in payloads.items() if logging_on else [("arrow", payloads["arrow"])]:
                        key = fmt if logging_on else "arrow_log_off"
                        try:
                            served = served_rows_per_s(server.url, body, ctype, tmp)
                        except RuntimeError as exc:
                            shape[key] = {"error": str(exc)}
                            continue
                        shape[key] = {**served, "over_raw": served["rows_per_s"] / raw["rows_per_s"]}
                finally:
                    server.stop()
            shape["ceiling"] = transport_ceiling(tmp, store, name, payloads["arrow"], raw)
            shape["mismatches"] = mismatches(shape["server"], raw)
            results["shapes"][name] = shape
    # where a bound is below the target, no server on this HTTP stack and machine can meet it
    results["target_within_bounds"] = {name: min(s["ceiling"][k] for k in ("bound_over_raw", "work_bound_over_raw",
                                                                           "cpu_bound_over_raw")) >= TARGET
                                       for name, s in results["shapes"].items()}
    results["meets_target"] = all(s.get("arrow", {}).get("over_raw", 0) >= TARGET and not s["mismatches"]
                                  for s in results["shapes"].values())
    return save(out_json_path, results)


def transport_ceiling(tmp: Path, store: Path, model: str, arrow: tuple[bytes, str], raw: dict[str, Any]) -> dict[str, Any]:
    """Rows/s of the bare app that reads the Arrow body and answers the service's Arrow answer to it, over raw."""
    body, ctype = arrow
    server = start_service(tmp, store, model, 1, prediction_log=False)
    try:
        answer = httpx.post(f"{server.url}/predict_many", content=body, headers={"content-type": ctype}, timeout=120)
    finally:
        server.stop()
    if answer.status_code != 200:
        raise RuntimeError(f"/predict_many answered {answer.status_code}: {answer.text[:300]}")
    answer_file = tmp / f"answer-{model}.arrow"
    answer_file.write_bytes(answer.content)
    ceiling = start_ceiling(tmp, 1, server_settings(tmp, store, model, 1), (answer_file, answer.headers["content-type"]))
    try:
        served = served_rows_per_s(ceiling.url, body, ctype, tmp)
    finally:
        ceiling.stop()
    return {**served, "over_raw": served["rows_per_s"] / raw["rows_per_s"], **bounds(served["seconds_median"], raw),
            "answer_mib": round(len(answer.content) / 2**20, 2)}


def bounds(transport: float, raw: dict[str, Any]) -> dict[str, Any]:
    """The most any server can reach over raw, from parts measured in this run (seconds per request).

    ``bound_over_raw``: a request is read, then predicted, one after the other (transport + predict).
    ``work_bound_over_raw``: the worker's own work for it too (decode, validate, number, answer), log off.
    ``cpu_bound_over_raw``: with the log on, every part's CPU (the log part's included) spread without
    loss over the machine's cores: a bound whatever runs in parallel with what.
    """
    predict, work, log_part = raw["seconds_median"], raw["request_work_seconds"], raw["log_part_seconds"]
    cores = len(os.sched_getaffinity(0))
    return {"bound_over_raw": predict / (transport + predict), "work_bound_over_raw": predict / (transport + work + predict),
            "cpu_bound_over_raw": predict / ((transport + work + predict + log_part) / cores), "cores": cores}


def mismatches(server: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """What differs between the server's worker and the raw process; empty when matched."""
    out = [f"{key} server={server[key]} | raw={raw[key]}" for key, raw_key in (("workers", "processes"), ("runtime", "runtime"))
           if server[key] != raw[raw_key]]
    return out + [f"{var} server={value} | raw={raw['env'].get(var)}" for var, value in server["env"].items()
                  if raw["env"].get(var) != value]


def _settings(shape: dict[str, Any]) -> str:
    server, raw = shape["server"], shape["raw"]
    env = {side: compact_env(s["env"]) for side, s in (("server", server), ("raw", raw))}
    line = (f"processes {server['workers']}|{raw['processes']}, runtime {server['runtime']}|{raw['runtime']}, "
            + ", ".join(f"{k} {v}|{env['raw'][k]}" for k, v in env["server"].items())
            + ", one request | one predict at a time")
    return ("UNMATCHED (" + "; ".join(shape["mismatches"]) + "): " if shape["mismatches"] else "matched: ") + line


def rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, target) lines for the ``make bench`` table: server | raw, with both sides' settings."""
    out = []
    for name, s in results["shapes"].items():
        raw = s["raw"]
        for fmt in ("arrow", "parquet", "json", "arrow_log_off", "ceiling"):
            f = s.get(fmt) or {}
            bound = (f"; at most: {f['bound_over_raw']:.2f} transport then predict, one after the other; "
                     f"{f['work_bound_over_raw']:.2f} with the worker's own work for the request "
                     f"({raw['request_work_seconds'] * 1000:.1f} ms: decode, validate, number, answer), log off; "
                     f"{f['cpu_bound_over_raw']:.2f} with the log part too ({raw['log_part_seconds'] * 1000:.1f} ms to encode "
                     f"and write), every part's CPU spread over {f['cores']} cores; raw predict "
                     f"{raw['seconds_median'] * 1000:.1f} ms, transport {f['seconds_median'] * 1000:.1f} ms"
                     if "bound_over_raw" in f else "")
            value = (f"error: {f['error'][:120]}" if "error" in f else
                     f"{f.get('over_raw', float('nan')):.2f}  ({f.get('rows_per_s', 0):,.0f} | raw "
                     f"{raw['rows_per_s']:,.0f} rows/s){bound}; {_settings(s)}")
            label = ("transport ceiling (a bare ASGI app on uvicorn reading the Arrow body, answering the service's answer)"
                     if fmt == "ceiling" else f"/predict_many {fmt}")
            out.append((f"{name} {label}, {results['rows_per_request']:,} records: server | raw "
                        f"{raw['runtime']} predict", value, f">= {TARGET:.2f}" if fmt == "arrow" else "reported"))
    return out


if __name__ == "__main__":
    for figure, value, target in rows(main(sys.argv[1] if len(sys.argv) > 1 else None)):
        print(f"{figure}: {value}   [{target}]")
