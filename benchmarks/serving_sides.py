"""The serving benchmark's sides, started with matched resources, and what each one runs with.

    service         ``flywheel serve``'s own command (bentoml serve), prediction log on
    fastapi_logged  FastAPI + uvicorn as a user writes it with validation and logging: a pydantic
                    model built from the version's schema checks every record, and every prediction
                    is appended to a buffer that a thread writes to the store as Parquet files
    fastapi_plain   FastAPI + uvicorn that only predicts (no validation, no log)
    ceiling         a bare ASGI app on uvicorn that answers a constant: the load generator's ceiling

Matched: every side runs ``workers`` server processes (uvicorn ``--workers`` = the service's
worker count), the same compute-thread caps (OMP/OpenBLAS/MKL_NUM_THREADS as ``flywheel
serve`` sets them, onnxruntime's intra- and inter-op threads at 1 in the served runtime), the
same ``MALLOC_TOP_PAD_``, and ``gc.freeze()`` once loaded (the service does it in its
constructor). The FastAPI sides predict with the runtime the service serves (``load_version``:
ONNX where its check passed), so the model's own work is the same object on every side.
``side_settings`` reads what each side really runs with from its processes (``/proc`` through
psutil), not from these constants.

``python -m benchmarks.serving_sides SHAPE [WORKERS]`` trains the shape's model, starts every side
exactly as ``make bench`` does, prints one JSON line (each side's pid, port and url) once all are
ready, and stops them when its stdin closes: benchmarks/tests/test_matched.py reads the processes of that
run (benchmarks and tests do not import each other).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import httpx
import psutil  # a dependency of bentoml

from components.net import free_port
from components.settings import MODEL_THREAD_ENV
from services.serving.launch import ServerProcess

SHAPES = ("linear", "trees")
BASELINES = ("fastapi_logged", "fastapi_plain")
MODEL_SIDES = ("service", *BASELINES)
MALLOC_PAD = "MALLOC_TOP_PAD_"

# --- the models -------------------------------------------------------------------------------

CANDIDATE = {"linear": {"family": "logistic", "params": {"C": 1.0}, "select": False},
             "trees": {"family": "hist_gradient_boosting", "params": {"learning_rate": 0.1, "max_leaf_nodes": 31},
                       "select": False}}


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


# --- the FastAPI apps ---------------------------------------------------------------------------
# Each reads its configuration from the JSON file beside it (uvicorn's workers import the module
# afresh, so it cannot come through argv). Both answer GET /runtime with the runtime they loaded.

# What the plain app and the logged app share: the served version loaded the way the service loads
# it, gc.freeze() once loaded (as in the service's workers), and GET /runtime.
_APP = '''
import gc, json
from contextlib import asynccontextmanager
from pathlib import Path
from fastapi import FastAPI
from components.registry import Registry
from components.store import LocalStore
from components.model_runtime import load_version

CONFIG = json.loads(Path(__file__).with_suffix(".json").read_text())
registry = Registry(LocalStore(CONFIG["store"]), CONFIG["model"])
served = load_version(registry, registry.champion().version, prefer_onnx=CONFIG["prefer_onnx"])
FEATURES = served.schema.feature_names
CLASSES = [str(c) for c in served.runtime.classes or []]
ON_START, ON_STOP = [], []


@asynccontextmanager
async def lifespan(app):
    gc.collect()
    gc.freeze()  # what is loaded stays out of the collector's passes
    for start in ON_START:
        start()
    yield
    for stop in ON_STOP:
        stop()

app = FastAPI(lifespan=lifespan)


@app.get("/runtime")
async def runtime():
    return {"runtime": served.runtime_name}
'''

FASTAPI_PLAIN = _APP + '''
import numpy as np, pandas as pd


@app.post("/predict")
async def predict(body: dict):
    pred = served.predict(pd.DataFrame(body["records"], columns=FEATURES))
    proba = np.round(pred.proba, 6).tolist() if pred.proba is not None else [None] * len(pred.values)
    return [{"prediction": v, **({"probabilities": dict(zip(CLASSES, p))} if p is not None else {})}
            for v, p in zip(pred.values.tolist(), proba)]
'''

FASTAPI_LOGGED = _APP + '''
import datetime as dt, threading, uuid
import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq
from pydantic import BaseModel, create_model

TYPES = {"numeric": float, "boolean": bool, "categorical": str, "datetime": dt.datetime}
# every field required, null allowed: as the service asks ("send null for an unknown value")
Record = create_model("Record", **{c.name: (TYPES[c.kind] | None, ...) for c in served.schema.features})


class Request(BaseModel):
    records: list[Record]


class ParquetLog:
    """Every prediction, buffered and written to the store as one Parquet file per flush by a thread."""

    def __init__(self, folder, flush_rows, flush_seconds):
        self.folder, self.flush_rows, self.flush_seconds = Path(folder), flush_rows, flush_seconds
        self.rows, self.lock, self.wake, self.done = [], threading.Lock(), threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def append(self, rows):
        with self.lock:
            self.rows.extend(rows)
            full = len(self.rows) >= self.flush_rows
        if full:
            self.wake.set()

    def run(self):
        while not self.done.is_set():
            self.wake.wait(self.flush_seconds)
            self.wake.clear()
            self.flush()
        self.flush()

    def flush(self):
        with self.lock:
            rows, self.rows = self.rows, []
        if rows:
            now = dt.datetime.now(dt.timezone.utc)
            folder = self.folder / f"date={now.date().isoformat()}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), folder / f"{now:%H%M%S%f}-{uuid.uuid4().hex}.parquet")

    def close(self):
        self.done.set()
        self.wake.set()
        self.thread.join()


log = ParquetLog(Path(CONFIG["store"]) / "predictions" / CONFIG["model"], CONFIG["flush_rows"], CONFIG["flush_seconds"])
ON_START.append(log.thread.start)
ON_STOP.append(log.close)


@app.post("/predict")
async def predict(body: Request):
    records = [r.model_dump() for r in body.records]
    pred = served.predict(pd.DataFrame(records, columns=FEATURES))
    proba = np.round(pred.proba, 6).tolist() if pred.proba is not None else [None] * len(records)
    now, version = dt.datetime.now(dt.timezone.utc), served.version
    out, logged = [], []
    for record, v, p in zip(records, pred.values.tolist(), proba):
        request_id = uuid.uuid4().hex
        logged.append({"request_id": request_id, "time": now, "model_version": version, **record, "prediction": v,
                       **({"probability": max(p)} if p is not None else {})})
        out.append({"request_id": request_id, "prediction": v, "model_version": version,
                    **({"probabilities": dict(zip(CLASSES, p))} if p is not None else {})})
    log.append(logged)
    return out
'''

# The ceiling: no framework, no model; reads the body and answers a constant (by default a
# one-record JSON answer; the columnar bench gives it the service's own answer to a table).
CONSTANT_APP = '''
import json
from pathlib import Path

CONFIG = json.loads(Path(__file__).with_suffix(".json").read_text())
BODY = Path(CONFIG["answer_file"]).read_bytes() if CONFIG.get("answer_file") else b'[{"prediction": 0}]'
HEADERS = [(b"content-type", CONFIG.get("content_type", "application/json").encode()),
           (b"content-length", str(len(BODY)).encode())]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
'''


# --- running servers ----------------------------------------------------------------------------

def server_settings(tmp: Path, store: Path, model: str, workers: int | None, prediction_log: bool = True) -> Any:
    """The service's settings for ``model`` in ``store``: its own spill directory under ``tmp``."""
    from components.settings import load_settings

    return load_settings(store=str(store), model=model, spill_dir=str(tmp / f"spill-{model}-{prediction_log}"),
                         prediction_log=prediction_log, serving_workers=workers)


def start_service(tmp: Path, store: Path, model: str, workers: int, prediction_log: bool = True) -> ServerProcess:
    """``flywheel serve``'s command for ``model`` with ``workers`` workers, once ready."""
    from services.serving import launch

    return launch.start(server_settings(tmp, store, model, workers, prediction_log), free_port(),
                        env={"BENTOML_HOME": str(tmp / "bentoml-home")},
                        log_path=tmp / f"service-{model}-{prediction_log}.log").wait_ready("/readyz")


def matched_env(settings: Any) -> dict[str, str]:
    """The thread caps and heap pad ``flywheel serve`` gives its workers, for the other sides to get the same."""
    from services.serving import launch

    _, env = launch.serve_command(settings)
    return {name: env[name] for name in (*MODEL_THREAD_ENV, MALLOC_PAD)}


def start_uvicorn(tmp: Path, name: str, source: str, workers: int, env: dict[str, str],
                  config: dict[str, Any] | None = None) -> ServerProcess:
    """``source`` as module ``name`` under ``uvicorn --workers workers`` (no access log), with ``env`` added."""
    from services.serving.launch import PROJECT_ROOT

    (tmp / f"{name}.py").write_text(source)
    (tmp / f"{name}.json").write_text(json.dumps(config or {}))
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", f"{name}:app", "--app-dir", str(tmp), "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    pythonpath = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    return ServerProcess(cmd, {**os.environ, **env, "PYTHONPATH": pythonpath}, port, tmp / f"{name}.log").start()


def start_sides(tmp: Path, store: Path, shape: str, workers: int, probe: str) -> dict[str, ServerProcess]:
    """The service and both FastAPI baselines of one shape, each with ``workers`` processes, all ready.

    ``probe`` (a request body) must get a 200 from each baseline before it counts as ready.
    """
    settings = server_settings(tmp, store, f"bench-{shape}", workers)
    env = matched_env(settings)
    config = {"store": str(store), "model": settings.model, "prefer_onnx": settings.serving_runtime != "sklearn",
              "flush_rows": settings.log_flush_rows, "flush_seconds": settings.log_flush_seconds}
    sides: dict[str, ServerProcess] = {}
    try:
        sides["service"] = start_service(tmp, store, settings.model, workers)
        for name, source in (("fastapi_logged", FASTAPI_LOGGED), ("fastapi_plain", FASTAPI_PLAIN)):
            sides[name] = start_uvicorn(tmp, f"{name}_{shape}", source, workers, env, config)
            sides[name].wait_ready("/predict", probe=probe.encode())
    except BaseException:
        for srv in sides.values():
            srv.stop()
        raise
    return sides


def start_ceiling(tmp: Path, workers: int, settings: Any, answer: tuple[Path, str] | None = None) -> ServerProcess:
    """The constant-answer server, with the same workers and environment as the model servers.

    ``answer`` (a file and its content type) is what it answers; else a one-record JSON answer.
    """
    config = {"answer_file": str(answer[0]), "content_type": answer[1]} if answer else {}
    return start_uvicorn(tmp, "constant_app", CONSTANT_APP, workers, matched_env(settings), config).wait_ready("/", probe=b"{}")


# --- what each side runs with, read from its processes -------------------------------------------

def serving_processes(pid: int, port: int) -> list[psutil.Process]:
    """The processes of ``pid``'s tree that serve ``port``: those listening on it with no listening child.

    A supervisor (uvicorn's with ``--workers``, BentoML's arbiter) holds the socket too but hands
    the connections to its children; a single-process server is its own worker.
    """
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    listening = {p.pid: p for p in tree
                 if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in p.net_connections("tcp"))}
    parents = {p.ppid() for p in listening.values()}
    return [p for p in listening.values() if p.pid not in parents]


def side_settings(srv: ServerProcess, runtime: str | None = None) -> dict[str, Any]:
    """Worker count, and the thread caps and heap pad of every worker, as its processes show them."""

    workers = serving_processes(srv.proc.pid, srv.port)
    envs = [w.environ() for w in workers]
    seen = {name: sorted({e.get(name, "unset") for e in envs}) for name in (*MODEL_THREAD_ENV, MALLOC_PAD)}
    return {"workers": len(workers), "env": {k: v[0] if len(v) == 1 else "/".join(v) for k, v in seen.items()},
            "runtime": runtime}


def runtime_of(name: str, srv: ServerProcess, probe: str) -> str:
    """The runtime a model side answers with: the service says it per prediction, the baselines on /runtime."""
    if name == "service":
        answer = httpx.post(srv.url + "/predict", content=probe, headers={"content-type": "application/json"}, timeout=30)
        return answer.json()[0]["runtime"]
    return httpx.get(srv.url + "/runtime", timeout=30).json()["runtime"]


def compact_env(env: dict[str, str | None]) -> dict[str, str]:
    """The thread caps (one value when the three agree) and the heap pad in MiB, for a settings line."""

    pad = env.get(MALLOC_PAD) or "unset"
    return {"threads": "/".join(dict.fromkeys(str(env.get(v)) for v in MODEL_THREAD_ENV)),
            MALLOC_PAD: f"{int(pad) >> 20}M" if pad.isdigit() else pad}


def mismatches(sides: dict[str, dict[str, Any]]) -> list[str]:
    """What differs between the sides' settings, one phrase each; empty when they are matched."""
    out = []
    for key in ("workers", "runtime"):
        values = {name: s[key] for name, s in sides.items() if s.get(key) is not None}
        if len(set(values.values())) > 1:
            out.append(f"{key} " + " | ".join(f"{n}={v}" for n, v in values.items()))
    for var in next(iter(sides.values()))["env"]:
        values = {name: s["env"][var] for name, s in sides.items()}
        if len(set(values.values())) > 1:
            out.append(f"{var} " + " | ".join(f"{n}={v}" for n, v in values.items()))
    return out


def main(shape: str, workers: int | None = None) -> None:
    """Start every side of ``shape`` as the bench does; one JSON line once ready; stop on stdin EOF."""
    from components.settings import load_settings
    from services.serving.launch import service_workers

    workers = workers or service_workers(load_settings())
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-sides-") as t:
        tmp = Path(t)
        bodies, _ = make_model(tmp / "store", shape)
        sides = start_sides(tmp, tmp / "store", shape, workers, bodies[0])
        try:
            sides["ceiling"] = start_ceiling(tmp, workers, server_settings(tmp, tmp / "store", f"bench-{shape}", workers))
            print(json.dumps({"workers": workers, "sides": {name: {"pid": s.proc.pid, "port": s.port, "url": s.url}
                                                          for name, s in sides.items()}}), flush=True)
            sys.stdin.read()  # until the caller closes our stdin
        finally:
            for srv in sides.values():
                srv.stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
