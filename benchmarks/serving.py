"""Serving benchmark: the Flywheel service against a minimal FastAPI app and the HTTP ceiling.

One run on this machine, the same model behind every server:

    a_onnx      the service (adaptive batching, prediction log on), ONNX runtime
    a_sklearn   the service, scikit-learn runtime
    a_nolog     the service, scikit-learn runtime, prediction log off (the log's cost)
    b_fastapi   FastAPI + uvicorn calling model.predict per request
    c_constant  the same FastAPI app answering a constant (the HTTP ceiling)
    many        /predict_many with 10,000 records per request, against raw model.predict

The load generator is a separate process (asyncio + httpx) with 32 concurrent clients,
bounded in time (BENCH_SECONDS, default 15) and in request count. Run it with
``python -m benchmarks.serving [out.json]``; ``main(path)`` returns the figures.
"""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing as mp
import os
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

CONCURRENCY = 32
MAX_REQUESTS = 2_000_000
MANY_ROWS = 10_000


# --- the model ------------------------------------------------------------------------------

def make_store(root: Path) -> tuple[list[dict[str, Any]], Any]:
    """A registry with one promoted classifier (numeric features, so ONNX converts) and its records."""
    import joblib
    from sklearn.datasets import load_breast_cancer

    from components.data import DatasetSpec, infer_schema
    from components.features import split
    from components.onnx_export import export_onnx
    from components.register import reference_sample
    from components.registry import Registry
    from components.store import LocalStore
    from components.train import make_model

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    schema = infer_schema(frame, DatasetSpec(source="memory", target="target", task="classification"))
    train, holdout = split(frame, schema, 0.25, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_model(schema, {"family": "logistic", "params": {"C": 1.0}, "select": False}, 0)
        model.fit(train[schema.feature_names], train["target"])
    onnx_bytes, report = export_onnx(model, holdout[schema.feature_names], schema.task)
    buf, ref = io.BytesIO(), io.BytesIO()
    joblib.dump(model, buf)
    reference_sample(model, train, schema, 0).to_parquet(ref, index=False)
    files = {"model.joblib": buf.getvalue(), "schema.json": schema.to_json().encode(),
             "metrics.json": b'{"task": "classification", "primary_metric": "none", "holdout": {}}',
             "reference.parquet": ref.getvalue(), "onnx.json": json.dumps(report, default=str).encode()}
    if onnx_bytes:
        files["model.onnx"] = onnx_bytes
    registry = Registry(LocalStore(root), "bench")
    version = registry.claim_version()
    registry.write_version(version, files, {})
    registry.promote(version, "benchmark")
    records = frame[schema.feature_names].to_dict("records")
    return records, model


# --- servers ----------------------------------------------------------------------------------

FASTAPI_APP = '''
import io, sys, joblib, pandas as pd
from fastapi import FastAPI, Request
model = joblib.load(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "-" else None
app = FastAPI()

@app.post("/predict")
async def predict(request: Request):
    body = await request.json()
    if model is None:
        return [{"prediction": 0}]
    frame = pd.DataFrame(body["records"])
    return [{"prediction": p} for p in model.predict(frame).tolist()]
'''


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready in {timeout}s")


class Running:
    def __init__(self, proc: subprocess.Popen, url: str, log: Any) -> None:
        self.proc, self.url, self.log = proc, url, log

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def start_service(tmp: Path, store: Path, runtime: str, logging_on: bool) -> Running:
    from components.settings import load_settings
    from services.serving import launch

    settings = load_settings(store=str(store), model="bench", spill_dir=str(tmp / "spill"))
    port = _free_port()
    cmd, env = launch.serve_command(settings, port)
    env.update({"FLYWHEEL_SERVING_RUNTIME": runtime, "FLYWHEEL_PREDICTION_LOG": "on" if logging_on else "off",
                "BENTOML_HOME": str(tmp / "bentoml-home")})
    log = open(tmp / f"service-{runtime}-{logging_on}.log", "ab")
    proc = subprocess.Popen(cmd, cwd=launch.PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(f"{url}/readyz", proc)
    return Running(proc, url, log)


def start_fastapi(tmp: Path, model_path: str) -> Running:
    app = tmp / "bench_app.py"
    app.write_text(FASTAPI_APP)
    port = _free_port()
    log = open(tmp / f"fastapi-{Path(model_path).name}.log", "ab")
    code = f"import sys, uvicorn; sys.argv = ['app', {model_path!r}]; sys.path.insert(0, {str(tmp)!r}); " \
           f"import bench_app; uvicorn.run(bench_app.app, host='127.0.0.1', port={port}, log_level='warning', access_log=False)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(f"{url}/docs", proc)
    return Running(proc, url, log)


# --- load generator (its own process) --------------------------------------------------------

def _load(url: str, bodies: list[bytes], seconds: float, concurrency: int, out: Any) -> None:
    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        failures = 0
        sent = 0
        stop_at = time.perf_counter() + seconds
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=60,
                                     headers={"content-type": "application/json"}) as client:
            async def worker(k: int) -> None:
                nonlocal failures, sent
                i = k
                while time.perf_counter() < stop_at and sent < MAX_REQUESTS:
                    sent += 1
                    t0 = time.perf_counter()
                    try:
                        r = await client.post(url, content=bodies[i % len(bodies)])
                        ok = r.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    if ok:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        failures += 1
                    i += concurrency

            start = time.perf_counter()
            await asyncio.gather(*(worker(k) for k in range(concurrency)))
            elapsed = time.perf_counter() - start
        lat = np.array(latencies) if latencies else np.array([np.nan])
        return {"requests": len(latencies), "failures": failures, "seconds": elapsed,
                "rps": len(latencies) / elapsed, "p50_ms": float(np.percentile(lat, 50) * 1000),
                "p99_ms": float(np.percentile(lat, 99) * 1000)}

    out.put(asyncio.run(run()))


def load(url: str, bodies: list[bytes], seconds: float, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    """Drive ``url`` from a separate process; returns requests/s and latency percentiles."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    httpx.post(url, content=bodies[0], headers={"content-type": "application/json"}, timeout=60)  # warm-up
    p = ctx.Process(target=_load, args=(url, bodies, seconds, concurrency, q))
    p.start()
    result = q.get(timeout=seconds + 300)
    p.join(timeout=30)
    return result


# --- the run ----------------------------------------------------------------------------------

def main(out_json_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run every case; write and return the figures (and the ratios the targets are about)."""
    seconds = float(os.environ.get("BENCH_SECONDS", "15"))
    results: dict[str, Any] = {"seconds_per_case": seconds, "concurrency": CONCURRENCY, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as t:
        tmp = Path(t)
        records, model = make_store(tmp / "store")
        import joblib

        joblib.dump(model, tmp / "model.joblib")
        single = [json.dumps({"records": [r]}).encode() for r in records]
        cases = [("a_onnx", "auto", True), ("a_sklearn", "sklearn", True), ("a_nolog", "sklearn", False)]
        for name, runtime, logging_on in cases:
            srv = start_service(tmp, tmp / "store", runtime, logging_on)
            try:
                results[name] = load(f"{srv.url}/predict", single, seconds)
                if name in ("a_onnx", "a_sklearn"):
                    results[f"many_{runtime}"] = _many(srv.url, records, model, seconds)
            finally:
                srv.stop()
        for name, path in (("b_fastapi", str(tmp / "model.joblib")), ("c_constant", "-")):
            srv = start_fastapi(tmp, path)
            try:
                results[name] = load(f"{srv.url}/predict", single, seconds)
            finally:
                srv.stop()
    results["ratios"] = _ratios(results)
    if out_json_path:
        Path(out_json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json_path).write_text(json.dumps(results, indent=2))
    return results


def _many(url: str, records: list[dict[str, Any]], model: Any, seconds: float) -> dict[str, Any]:
    """Rows/s of /predict_many at 10,000 records per request vs raw model.predict on the same rows."""
    rows = (records * (MANY_ROWS // len(records) + 1))[:MANY_ROWS]
    frame = pd.DataFrame(rows)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < min(seconds, 5) or n < 3:
        model.predict(frame)
        n += 1
    raw = n * MANY_ROWS / (time.perf_counter() - t0)
    body = [json.dumps({"records": rows}).encode()]
    served = load(f"{url}/predict_many", body, min(seconds, 10), concurrency=2)
    return {"raw_rows_per_s": raw, "served_rows_per_s": served["rps"] * MANY_ROWS,
            "p50_ms": served["p50_ms"], "p99_ms": served["p99_ms"], "failures": served["failures"]}


def _ratios(r: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in ("a_onnx", "a_sklearn"):
        out[f"{a}_vs_b_throughput"] = r[a]["rps"] / r["b_fastapi"]["rps"]
        out[f"{a}_vs_b_p99"] = r[a]["p99_ms"] / r["b_fastapi"]["p99_ms"]
        out[f"{a}_vs_ceiling"] = r[a]["rps"] / r["c_constant"]["rps"]
    out["logging_cost"] = 1 - r["a_sklearn"]["rps"] / r["a_nolog"]["rps"]
    for k in ("many_auto", "many_sklearn"):
        if k in r:
            out[f"{k}_vs_raw_predict"] = r[k]["served_rows_per_s"] / r[k]["raw_rows_per_s"]
    out["targets"] = {
        "a_at_least_b_throughput": max(out["a_onnx_vs_b_throughput"], out["a_sklearn_vs_b_throughput"]) >= 1.0,
        "a_p99_no_worse": min(out["a_onnx_vs_b_p99"], out["a_sklearn_vs_b_p99"]) <= 1.0,
        "logging_cost_at_most_10pct": out["logging_cost"] <= 0.10,
        "many_at_least_half_raw": max(v for k, v in out.items() if k.endswith("_vs_raw_predict")) >= 0.5,
    }
    return out


def _table(r: dict[str, Any]) -> str:
    lines = [f"{'case':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}"]
    for k in ("a_onnx", "a_sklearn", "a_nolog", "b_fastapi", "c_constant"):
        v = r[k]
        lines.append(f"{k:<12} {v['rps']:>9.0f} {v['p50_ms']:>8.1f} {v['p99_ms']:>8.1f} {v['failures']:>7}")
    for k in ("many_auto", "many_sklearn"):
        if k in r:
            v = r[k]
            lines.append(f"{k:<12} served {v['served_rows_per_s']:,.0f} rows/s vs raw predict {v['raw_rows_per_s']:,.0f} rows/s")
    lines.append(json.dumps(r["ratios"], indent=2))
    return "\n".join(lines)


if __name__ == "__main__":
    figures = main(sys.argv[1] if len(sys.argv) > 1 else "bench-results/serving.json")
    print(_table(figures))
