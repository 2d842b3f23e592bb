"""Serving benchmark: the Flywheel service against FastAPI+uvicorn, driven by ``wrk``.

The load generator is ``wrk`` (a compiled HTTP load generator; Debian package ``wrk``),
with a Lua script that cycles through real JSON POST bodies. Every figure is measured in
one run on this machine, so the ratios are what count:

    service    the Flywheel service (``flywheel serve``: adaptive batching, prediction log on)
    fastapi    FastAPI + uvicorn (one process, its default) doing the same work per request: the same
               validation, the same model runtime's predict, the same prediction log
    constant   a bare ASGI app on uvicorn that answers a constant: the generator's ceiling

Two model shapes, each at concurrency 1, 8 and 32:

    linear     logistic regression on 30 numeric features (breast cancer)
    trees      histogram gradient boosting on mixed numeric, categorical and date features (churn)

The ceiling must reach at least 3x the fastest model server's throughput at the same
concurrency, or the run says its figures are capped by the generator.

Run it with ``python -m benchmarks.serving [out.json]``; ``main(path)`` returns the figures
and ``rows(figures)`` the lines of the ``make bench`` table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import httpx

CONCURRENCY = (1, 8, 32)
SHAPES = ("linear", "trees")
CEILING_FACTOR = 3.0
INSTALL_HINT = "install wrk with `sudo apt-get install -y wrk` (Debian/Ubuntu) or `brew install wrk` (macOS)"
TARGETS = {"throughput_c32": 1.5, "p99_c32": 1.0, "p50_c1_ms": 2.0}

# Cycles through one prebuilt request per line of the bodies file (args[1]); done() prints
# the figures as one JSON line, which the bench parses (wrk's own text output is for people).
WRK_LUA = r'''
local requests = {}
local n = 0
local i = 0

init = function(args)
  for line in io.lines(args[1]) do
    n = n + 1
    requests[n] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, line)
  end
  i = math.random(n) - 1
end

request = function()
  i = i % n + 1
  return requests[i]
end

done = function(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
'''


# --- the generator ----------------------------------------------------------------------------

def generator() -> dict[str, str]:
    """Which load generator this run uses; raises with the one-line install hint when missing."""
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError(f"the serving benchmark needs wrk: {INSTALL_HINT}")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    version = (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "wrk"
    return {"name": "wrk", "path": path, "version": version.split(" Copyright")[0].strip()}


def wrk(url: str, bodies_file: Path, script: Path, seconds: float, concurrency: int) -> dict[str, Any]:
    """Drive ``url`` with wrk at ``concurrency`` connections; requests/s and latency percentiles."""
    threads = 1 if concurrency == 1 else 2  # two cores: a second wrk thread only at c > 1
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s",
           "-s", str(script), url, "--", str(bodies_file)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
    match = re.search(r"^WRK_JSON (\{.*\})$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-500:]}")
    raw = json.loads(match.group(1))
    failed = raw["status_errors"] + raw["timeouts"] + raw["connect_errors"] + raw["read_errors"] + raw["write_errors"]
    ok = max(raw["requests"] - raw["status_errors"], 0)
    duration = raw["duration_us"] / 1e6
    return {"rps": ok / duration, "p50_ms": raw["p50_us"] / 1000, "p90_ms": raw["p90_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "max_ms": raw["max_us"] / 1000, "requests": raw["requests"],
            "failures": failed, "seconds": round(duration, 2)}


# --- the models -------------------------------------------------------------------------------

def _frame(shape: str) -> tuple[Any, Any]:
    """(frame, DatasetSpec) of one model shape."""
    from components.data import DatasetSpec

    if shape == "linear":
        from sklearn.datasets import load_breast_cancer

        frame = load_breast_cancer(as_frame=True).frame
        frame.columns = [c.replace(" ", "_") for c in frame.columns]
        return frame, DatasetSpec(source="memory", target="target", task="classification")
    from components.synthetic import churn

    frame = churn(4000, seed=3)
    return frame, DatasetSpec(source="memory", target="churned", task="classification", timestamp="event_time",
                              id_columns=("customer_id",))


CANDIDATE = {"linear": {"family": "logistic", "params": {"C": 1.0}, "select": False},
             "trees": {"family": "hist_gradient_boosting", "params": {"learning_rate": 0.1, "max_leaf_nodes": 31},
                       "select": False}}


def make_model(store: Path, shape: str) -> tuple[list[str], str]:
    """Train, register and promote model ``bench-<shape>`` in ``store``.

    Returns the JSON request bodies (one record each) and the runtime the service will pick.
    """
    from components.data import infer_schema
    from components.package import package
    from components.registry import Registry
    from components.split import split
    from components.store import LocalStore
    from components.train import make_model as build

    frame, spec = _frame(shape)
    schema = infer_schema(frame, spec)
    train, holdout = split(frame, schema, 0.25, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(schema, CANDIDATE[shape], 0)
        model.fit(train[schema.feature_names], train[schema.target])
        made = package(model, train, holdout, schema, 0)
    files = {**made.files(), "schema.json": schema.to_json().encode(),
             "metrics.json": b'{"task": "classification", "primary_metric": "none", "holdout": {}}'}
    registry = Registry(LocalStore(store), f"bench-{shape}")
    version = registry.claim_version()
    registry.write_version(version, files, {})
    registry.promote(version, "benchmark")
    features = frame[schema.feature_names].astype(object)
    features = features.where(features.notna(), None)  # JSON null, never NaN
    bodies = [json.dumps({"records": [r]}, default=str) for r in features.to_dict("records")]
    return bodies, "onnx" if made.onnx_report.get("passed") else "sklearn"


# --- servers ----------------------------------------------------------------------------------

# The same work per request as the service, written the plain FastAPI way (one request, one
# model call): the version's validator, the runtime the service picked (ONNX where it passed),
# and every prediction appended to the same prediction log, with the same settings.
FASTAPI_APP = '''
import sys, uuid
from contextlib import asynccontextmanager
import numpy as np, pandas as pd
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from components.data import MODEL_VERSION, PREDICTION, REQUEST_ID, TIME
from components.registry import Registry
from components.settings import load_settings
from components.store import open_store
from components.validation import InvalidInput
from services.serving.model import load_version
from services.serving.prediction_log import RecordLog

settings = load_settings(store=sys.argv[1], model=sys.argv[2], spill_dir=sys.argv[3])
registry = Registry(open_store(settings.store, settings), settings.model)
model = load_version(registry, registry.champion().version)
log = RecordLog(open_store(settings.store, settings), settings.model, "predictions", settings.spill_dir,
                settings.log_flush_rows, settings.log_flush_seconds, max_buffer_rows=settings.log_max_buffer_rows)
classes = [str(c) for c in model.classes or []]

@asynccontextmanager
async def lifespan(app):
    log.start()
    yield
    log.close(settings.log_close_seconds)

app = FastAPI(lifespan=lifespan)

@app.post("/predict")
async def predict(body: dict):
    try:
        checked = model.validator.validate_records(body.get("records"))
    except InvalidInput as exc:
        return JSONResponse({"detail": str(exc)}, status_code=400)
    frame = checked.frame
    pred = model.predict(frame)
    n = len(frame)
    ids = [uuid.uuid4().hex for _ in range(n)]
    columns = {REQUEST_ID: ids, TIME: pd.DatetimeIndex([pd.Timestamp.now(tz="UTC")]).repeat(n),
               MODEL_VERSION: np.full(n, model.version, dtype=object)}
    if checked.passthrough is not None:
        columns.update({c: checked.passthrough[c].to_numpy() for c in checked.passthrough.columns})
    columns.update({c: frame[c].to_numpy() for c in frame.columns})
    columns[PREDICTION] = pred.values
    if pred.proba is not None:
        columns["_proba"] = pred.proba.max(axis=1)
    log.append(columns)  # the columns as they are, as the service hands them to the log
    out = [{} for _ in range(checked.total)]
    proba = np.round(pred.proba, 6).tolist() if pred.proba is not None else [None] * n
    for pos, i, v, p in zip(frame.index, ids, pred.values.tolist(), proba):
        out[pos] = {"request_id": i, "prediction": v, "model_version": model.version, "runtime": model.runtime_name,
                    **({"probabilities": dict(zip(classes, p))} if p is not None else {})}
    for pos, problems in checked.by_record().items():
        out[pos] = {"error": "; ".join(str(p) for p in problems), "model_version": model.version}
    return out
'''

# The ceiling: no framework, no model; reads the body and answers a constant.
CONSTANT_APP = '''
BODY = b'[{"prediction": 0}]'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A server process in its own process group, with its log file."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Any) -> None:
        self.proc, self.url, self.log = proc, url, log

    def wait_ready(self, path: str, probe: bytes | None = None, timeout: float = 120) -> Running:
        from services.serving.launch import wait_until_ok

        def post() -> httpx.Response:
            return httpx.post(self.url + path, content=probe, headers={"content-type": "application/json"}, timeout=5)

        problem = wait_until_ok(self.proc, self.url + path, timeout, request=post if probe is not None else None)
        if problem is None:
            return self
        self.log.flush()
        tail = Path(self.log.name).read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"{self.url}{path}: server {problem}: {tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def start_service(tmp: Path, store: Path, shape: str, workers: int | None) -> Running:
    """``flywheel serve``'s command for model ``bench-<shape>``, prediction log on."""
    from components.settings import load_settings
    from services.serving import launch

    settings = load_settings(store=str(store), model=f"bench-{shape}", spill_dir=str(tmp / f"spill-{shape}"),
                             prediction_log=True, serving_workers=workers)
    port = _free_port()
    cmd, env = launch.serve_command(settings, port)
    env["BENTOML_HOME"] = str(tmp / "bentoml-home")
    log = open(tmp / f"service-{shape}.log", "ab")
    proc = subprocess.Popen(cmd, cwd=launch.PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return Running(proc, f"http://127.0.0.1:{port}", log).wait_ready("/readyz")


def start_uvicorn(tmp: Path, name: str, source: str, argv: list[str]) -> Running:
    """``source`` as module ``name`` served by uvicorn (one process, httptools, no access log)."""
    (tmp / f"{name}.py").write_text(source)
    port = _free_port()
    log = open(tmp / f"{name}.log", "ab")
    code = (f"import sys, uvicorn; sys.argv = ['app', *{argv!r}]; sys.path.insert(0, {str(tmp)!r}); "
            f"import {name}; uvicorn.run({name}.app, host='127.0.0.1', port={port}, log_level='warning', "
            f"access_log=False)")
    from services.serving.launch import MODEL_THREAD_ENV, PROJECT_ROOT

    # the same compute threads as the service's workers, so the ratio compares the servers
    env = {**os.environ, **{name: os.environ.get(name, "1") for name in MODEL_THREAD_ENV}}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)
    return Running(proc, f"http://127.0.0.1:{port}", log)


# --- the run ----------------------------------------------------------------------------------

def _measure(srv: Running, bodies_file: Path, script: Path, seconds: float, warmup: float,
             concurrency: tuple[int, ...] = CONCURRENCY) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in concurrency:
        wrk(f"{srv.url}/predict", bodies_file, script, warmup, c)  # warm caches and the batcher's latency model
        out[str(c)] = wrk(f"{srv.url}/predict", bodies_file, script, seconds, c)
    return out


def _measure_c1_interleaved(servers: dict[str, Running], bodies_file: Path, script: Path, seconds: float,
                            warmup: float, repeats: int) -> dict[str, dict[str, Any]]:
    """c=1 for each server, ``repeats`` runs taken in turns (A, B, A, B, ...); each server's median-p50 run.

    A one-client p50 moves by a millisecond from one run to the next on a shared machine; runs taken
    in turns see the same drift, and the median of each server's runs is compared.
    """
    for srv in servers.values():
        wrk(f"{srv.url}/predict", bodies_file, script, warmup, 1)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for _ in range(repeats):
        for name, srv in servers.items():
            runs[name].append(wrk(f"{srv.url}/predict", bodies_file, script, seconds, 1))
    out = {}
    for name, taken in runs.items():
        ordered = sorted(taken, key=lambda r: r["p50_ms"])
        out[name] = {**ordered[len(ordered) // 2], "p50_runs_ms": [round(r["p50_ms"], 3) for r in taken]}
    return out


def main(out_json_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the matrix (shape x concurrency x server); write and return the figures and ratios."""
    from components.settings import load_settings
    from services.serving.launch import service_workers

    seconds = float(os.environ.get("BENCH_SECONDS", "10"))
    warmup = max(2.0, seconds / 5)
    c1_repeats = int(os.environ.get("BENCH_C1_REPEATS", "3"))
    workers = service_workers(load_settings())
    results: dict[str, Any] = {"generator": generator(), "seconds_per_cell": seconds, "c1_repeats": c1_repeats,
                               "cpus": os.cpu_count(),
                               "service_workers": workers, "fastapi_workers": 1,
                               "settings_note": _settings_note(workers), "shapes": {}}
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-serving-") as t:
        tmp = Path(t)
        script = tmp / "post.lua"
        script.write_text(WRK_LUA)
        for shape in SHAPES:
            bodies, runtime = make_model(tmp / "store", shape)
            bodies_file = tmp / f"{shape}.jsonl"
            bodies_file.write_text("\n".join(bodies) + "\n")
            cell: dict[str, Any] = {"runtime": runtime}
            servers: dict[str, Running] = {}
            try:  # both up at once: the c=1 runs are taken in turns; the one not measured idles
                servers["service"] = start_service(tmp, tmp / "store", shape, workers)
                servers["fastapi"] = start_uvicorn(
                    tmp, f"fastapi_{shape}", FASTAPI_APP,
                    [str(tmp / "store"), f"bench-{shape}", str(tmp / f"spill-fastapi-{shape}")],
                ).wait_ready("/predict", bodies[0].encode())
                one = _measure_c1_interleaved(servers, bodies_file, script, seconds, warmup, c1_repeats)
                for name, srv in servers.items():
                    cell[name] = {"1": one[name], **_measure(srv, bodies_file, script, seconds, warmup, CONCURRENCY[1:])}
            finally:
                for srv in servers.values():
                    srv.stop()
            results["shapes"][shape] = cell
        srv = start_uvicorn(tmp, "constant_app", CONSTANT_APP, [])
        try:
            srv.wait_ready("/", b"{}")
            bodies_file = tmp / f"{SHAPES[-1]}.jsonl"
            results["ceiling"] = _measure(srv, bodies_file, script, seconds, warmup)
        finally:
            srv.stop()
    results["ratios"] = ratios(results)
    if out_json_path:
        Path(out_json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json_path).write_text(json.dumps(results, indent=2))
    return results


def _settings_note(workers: int) -> str:
    from services.serving.service import BATCHING

    return (f"service: {workers} worker(s) (serving_workers, default one per CPU of the cgroup limit), "
            f"max_batch_size={BATCHING['max_batch_size']}, max_latency_ms={BATCHING['max_latency_ms']}; "
            f"one model thread per process (OMP/OpenBLAS/MKL_NUM_THREADS=1) in both; fastapi: uvicorn, 1 process, "
            f"same validation, runtime and prediction log")


def ratios(r: dict[str, Any]) -> dict[str, Any]:
    """Service / FastAPI and server / ceiling per cell; the capped flag; the targets."""
    out: dict[str, Any] = {"cells": {}}
    capped = []
    for c in map(str, CONCURRENCY):
        ceiling = r["ceiling"][c]["rps"]
        fastest = max(r["shapes"][s][k][c]["rps"] for s in r["shapes"] for k in ("service", "fastapi"))
        if ceiling < CEILING_FACTOR * fastest:
            capped.append(c)
        for shape, cell in r["shapes"].items():
            svc, fa = cell["service"][c], cell["fastapi"][c]
            out["cells"][f"{shape}/c{c}"] = {
                "throughput_vs_fastapi": svc["rps"] / fa["rps"] if fa["rps"] else float("inf"),
                "p99_vs_fastapi": svc["p99_ms"] / fa["p99_ms"] if fa["p99_ms"] else float("inf"),
                "p50_minus_fastapi_ms": svc["p50_ms"] - fa["p50_ms"],
                "service_vs_ceiling": svc["rps"] / ceiling, "fastapi_vs_ceiling": fa["rps"] / ceiling}
    out["ceiling_over_fastest"] = {c: r["ceiling"][c]["rps"] / max(r["shapes"][s][k][c]["rps"] for s in r["shapes"]
                                                                    for k in ("service", "fastapi"))
                                   for c in map(str, CONCURRENCY)}
    out["capped"] = capped
    cells = out["cells"]
    out["targets"] = {
        f"{shape}: c=32 throughput >= {TARGETS['throughput_c32']}x fastapi":
            cells[f"{shape}/c32"]["throughput_vs_fastapi"] >= TARGETS["throughput_c32"] for shape in r["shapes"]}
    out["targets"].update({f"{shape}: c=32 p99 no worse than fastapi": cells[f"{shape}/c32"]["p99_vs_fastapi"] <= 1.0
                           for shape in r["shapes"]})
    out["targets"].update({f"{shape}: c=1 p50 within {TARGETS['p50_c1_ms']:g} ms of fastapi":
                           cells[f"{shape}/c1"]["p50_minus_fastapi_ms"] <= TARGETS["p50_c1_ms"] for shape in r["shapes"]})
    out["targets"]["generator not capped (ceiling >= 3x fastest server)"] = not capped
    return out


def _c1_runs(svc: dict[str, Any], fa: dict[str, Any]) -> str:
    """The p50 of every c=1 run (taken in turns) when there were several; the cell shows the medians."""
    if len(svc.get("p50_runs_ms", ())) < 2:
        return ""
    return (f"; p50 runs {'/'.join(f'{v:.1f}' for v in svc['p50_runs_ms'])} | "
            f"{'/'.join(f'{v:.1f}' for v in fa['p50_runs_ms'])} ms (medians shown)")


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, target) lines for the ``make bench`` table."""
    g = r["generator"]
    out = [("generator", f"{g['name']} ({g['version']}); {r['seconds_per_cell']:g} s per cell", "compiled generator"),
           ("settings", r["settings_note"], "")]
    ratio = r["ratios"]
    for c in map(str, CONCURRENCY):
        ceil = r["ceiling"][c]
        out.append((f"ceiling (constant server) c={c}", f"{ceil['rps']:.0f} req/s, p50 {ceil['p50_ms']:.1f} ms; "
                    f"{ratio['ceiling_over_fastest'][c]:.1f}x the fastest model server",
                    f">= {CEILING_FACTOR:g}x" + ("  CAPPED: figures limited by the generator" if c in ratio["capped"] else "")))
    for shape, cell in r["shapes"].items():
        for c in map(str, CONCURRENCY):
            svc, fa, x = cell["service"][c], cell["fastapi"][c], ratio["cells"][f"{shape}/c{c}"]
            target = ""
            if c == "32":
                target = f">= {TARGETS['throughput_c32']:g}x req/s, p99 ratio <= 1"
            elif c == "1":
                target = f"p50 within {TARGETS['p50_c1_ms']:g} ms"
            out.append((f"{shape} ({cell['runtime']}) c={c}: service | fastapi",
                        f"{svc['rps']:.0f} | {fa['rps']:.0f} req/s ({x['throughput_vs_fastapi']:.2f}x); "
                        f"p50 {svc['p50_ms']:.1f} | {fa['p50_ms']:.1f} ms; p99 {svc['p99_ms']:.1f} | {fa['p99_ms']:.1f} ms "
                        f"({x['p99_vs_fastapi']:.2f}x); ceiling {x['service_vs_ceiling']:.2f} | {x['fastapi_vs_ceiling']:.2f}; "
                        f"failed {svc['failures']} | {fa['failures']}" + _c1_runs(svc, fa), target))
    met = ratio["targets"]
    out.append(("targets met", f"{sum(met.values())}/{len(met)}", "; ".join(k for k, v in met.items() if not v) or "all"))
    return out


if __name__ == "__main__":
    figures = main(sys.argv[1] if len(sys.argv) > 1 else "bench-results/serving.json")
    for figure, value, target in rows(figures):
        print(f"{figure:<44} {value}   [{target}]")
