"""Scale-out refit: one XGBoost model trained by N workers over XGBoost's collective (Rabit) protocol.

The same worker code runs everywhere; only who starts the workers and the tracker differs:

* embedded: N local processes (``run_local``);
* cluster: the N pods of a Kubeflow Trainer ``TrainJob`` on its XGBoost runtime, which injects
  ``DMLC_*`` (components/trainjob.py);
* the container tier: N containers of the component image with ``DMLC_*`` set as the runtime sets them.

The refit step (the coordinator, ``distributed_refit``) fits the model's preprocessing on a bounded
sample of the training rows, writes a job (the plan of every worker's share, the fitted
preprocessing, the booster's parameters) to the store under ``training/<model>/<job>/``, starts the
workers and waits. Each worker reads only its own share of the training Parquet row groups, streams
it batch by batch through the preprocessing into a ``QuantileDMatrix`` (the sketch is merged across
workers by the collective), trains, and rank 0 writes the booster to the store. A worker's memory is
its share's bins plus a fixed cost; the fixed cost is kept small so that N workers divide the
memory: the gradient-boosted families' preprocessing (``features.native_preprocessor``: numbers,
category codes, date parts) is applied by the worker to the Arrow batches themselves
(``native_ops``/``arrow_features``, checked equal to the fitted pipeline on the coordinator's
sample), so such a worker imports neither pandas nor scikit-learn; any other preprocessing is
unpickled and applied to a pandas copy of each batch. The coordinator puts
the booster behind the preprocessing: the model is an ordinary scikit-learn pipeline, packaged and
served like any other. A worker that fails fails the refit with its rank named; nothing is registered.

In every runtime rank 0 runs XGBoost's own tracker (``xgboost.tracker.RabitTracker``) where
``DMLC_TRACKER_URI``/``DMLC_TRACKER_PORT`` point, as the Trainer's XGBoost runtime expects of it.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.net import free_port
from components.proc import peak_rss_kib
from components.settings import Settings
from components.store import Store, open_store

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from sklearn.pipeline import Pipeline

    from components.data import Schema

JOB_PREFIX = "training"
# Rows a worker turns into one batch of the QuantileDMatrix: its memory beyond the compressed
# matrix is about one batch (Parquet's decoded pages, the Arrow batch, its float32 features).
# Measured reading a 250k-row group of the churn table: 74 MiB above the interpreter at 65,536
# rows a batch, 32 MiB at 16,384.
BATCH_ROWS = 16_384
ENGINE_LOCAL = "xgboost-collective-local"
ENGINE_TRAINJOB = "xgboost-collective-trainjob"
ENGINE_IN_PROCESS = "in-process"


class TrainingFailed(RuntimeError):
    """The distributed refit did not produce a model; the message names the worker or the job."""


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of one row group of one training file."""

    file: str
    row_group: int
    start: int
    stop: int


@dataclass(frozen=True)
class Job:
    """Everything a worker needs, stored as ``<prefix>/job.json`` next to the fitted preprocessing."""

    store: str
    prefix: str  # training/<model>/<job>: job.json, prep.joblib, model.ubj, rank-<r>.json
    shares: list[list[Piece]]
    features: list[str]
    target: str
    classes: list[Any] | None
    params: dict[str, Any]
    rounds: int
    enable_categorical: bool = False
    feature_types: list[str] | None = None  # XGBoost's 'q'/'c' per preprocessed column, when the estimator names them
    class_weights: list[float] | None = None  # per class index: each row weighted by its class (balanced classes)
    batch_rows: int = BATCH_ROWS
    local_files: bool = False  # ``file`` values are paths this machine reads, not store keys
    native: list[list[Any]] | None = None  # the preprocessing as ``native_ops`` (None: the worker unpickles prep.joblib)

    @property
    def workers(self) -> int:
        return len(self.shares)

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> Job:
        raw = json.loads(text)
        raw["shares"] = [[Piece(**p) for p in share] for share in raw["shares"]]
        return cls(**raw)


@dataclass(frozen=True)
class Outcome:
    """What the workers did: the booster (rank 0's bytes) and each worker's rows and peak memory."""

    booster: bytes
    workers: list[dict[str, Any]] = field(default_factory=list)
    engine: str = ENGINE_LOCAL


def plan_shares(row_groups: list[tuple[str, list[int]]], workers: int) -> list[list[Piece]]:
    """Split the rows of the files' row groups (in order) into ``workers`` contiguous shares of about equal size.

    Each share is a list of row-group slices, so a worker reads only the row groups it owns
    (two neighbours may share one row group at a boundary). Raises ValueError when there are
    fewer rows than workers: every worker must hold at least one row for the collective sketch.
    """
    total = sum(sum(sizes) for _, sizes in row_groups)
    if workers < 1 or total < workers:
        raise ValueError(f"{total} training rows cannot be shared among {workers} workers")
    bounds = [total * r // workers for r in range(workers + 1)]
    shares: list[list[Piece]] = [[] for _ in range(workers)]
    offset = 0
    for file, sizes in row_groups:
        for rg, size in enumerate(sizes):
            for rank in range(workers):
                lo, hi = max(bounds[rank], offset), min(bounds[rank + 1], offset + size)
                if lo < hi:
                    shares[rank].append(Piece(file, rg, lo - offset, hi - offset))
            offset += size
    return shares


def balanced_weights(files: list[str], target: str, classes: list[Any]) -> list[float]:
    """Per class (in ``classes`` order): rows / (classes x rows of the class), counted over the target column alone.

    The weights scikit-learn's ``class_weight="balanced"`` gives, over all workers' rows at once, so
    a distributed refit weights its classes as the one-process refit of the same estimator does.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    counts: dict[Any, int] = {}
    for f in files:
        for row in pc.value_counts(pq.read_table(f, columns=[target])[target].drop_null()).to_pylist():
            counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
    total = sum(counts.values())
    return [total / (len(classes) * counts[c]) if counts.get(c) else 0.0 for c in classes]


def booster_params(estimator: Any, classes: list[Any] | None) -> tuple[dict[str, Any], int, bool]:
    """The booster parameters, boosting rounds and categorical flag of an XGBoost scikit-learn estimator.

    Taken from the estimator the search chose (its ``get_xgb_params``), so the distributed refit
    trains exactly the candidate that was scored; the objective follows the number of classes.
    """
    params = {k: v for k, v in estimator.get_xgb_params().items() if v is not None}
    if classes is not None and len(classes) > 2:
        params.update(objective="multi:softprob", num_class=len(classes))
    elif classes is not None:
        params["objective"] = "binary:logistic"
    params.setdefault("tree_method", "hist")
    rounds = int(getattr(estimator, "n_estimators", None) or 100)
    return params, rounds, bool(getattr(estimator, "enable_categorical", False))


def is_distributable(model: Pipeline) -> bool:
    """Whether a model's final step is an XGBoost scikit-learn estimator (the one family trained distributed)."""
    try:
        from xgboost import XGBModel
    except ImportError:  # pragma: no cover - xgboost is a dependency
        return False
    return isinstance(model.steps[-1][1], XGBModel)


# --- the worker -------------------------------------------------------------------------


def _labels(values: Any, target: str, classes: list[Any] | None) -> Any:
    """A batch's target column (Arrow) as XGBoost's labels: class codes in ``classes`` order, or the values."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if classes is None:
        return pc.cast(values, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    index = {c: float(i) for i, c in enumerate(classes)}  # schema classes are JSON-normalised, as Arrow's Python values
    codes = _per_distinct(values, lambda v: index.get(v, np.nan))
    if np.isnan(codes).any():
        raise ValueError(f"target {target!r} holds a value outside the schema's classes {classes}")
    return codes


def _per_distinct(column: Any, value: Callable[[Any], float]) -> Any:
    """``value`` of each row's Python value as float32, computed once per distinct value of the Arrow ``column``."""
    import numpy as np
    import pyarrow.compute as pc

    distinct = pc.unique(column)
    values = np.asarray([value(v) for v in distinct.to_pylist()], dtype="float32")
    return values[pc.index_in(column, value_set=distinct).to_numpy(zero_copy_only=False)]


# The date parts of ``features.date_parts`` (pandas' year, month, day, dayofweek with Monday 0, hour),
# as Arrow computes them.
_ARROW_DATE_PARTS = ("year", "month", "day", "day_of_week", "hour")


def native_ops(prep: Any) -> list[list[Any]] | None:
    """The fitted ``features.native_preprocessor`` as plain data a worker applies without scikit-learn.

    One op per input column, in output order: ``["number", column]``, ``["category", column,
    categories]`` or ``["date", column]`` (five parts). None when ``prep`` is not exactly that
    preprocessor (a pipeline whose only step is it): the workers then unpickle ``prep``.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import FunctionTransformer

    from components.features import DATE_PARTS, CategoryCodes, date_parts

    steps = getattr(prep, "steps", None)
    if not steps or len(steps) != 1 or not isinstance(steps[0][1], ColumnTransformer):
        return None
    if [p.replace("dayofweek", "day_of_week") for p in DATE_PARTS] != list(_ARROW_DATE_PARTS):
        return None  # features.date_parts changed: the workers apply the pickled pipeline
    ops: list[list[Any]] = []
    for _, transformer, columns in steps[0][1].transformers_:
        if transformer == "drop":
            continue
        function = type(transformer) is FunctionTransformer and transformer.kw_args is None
        if transformer == "passthrough" or (function and transformer.func is None):  # fitted, passthrough is identity
            ops += [["number", c] for c in columns]
        elif type(transformer) is CategoryCodes:
            ops += [["category", c, list(cats)] for c, cats in zip(columns, transformer.categories, strict=True)]
        elif function and transformer.func is date_parts:
            ops += [["date", c] for c in columns]
        else:
            return None
    return ops


def arrow_features(batch: Any, ops: list[list[Any]]) -> Any:
    """``native_ops`` applied to an Arrow batch: the float32 matrix the fitted preprocessing would give XGBoost.

    Missing values, categories the schema does not list and unreadable dates are NaN, as in
    ``features``. Raises TypeError on a column type it does not read (a date stored as text).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    width = sum(len(_ARROW_DATE_PARTS) if op[0] == "date" else 1 for op in ops)
    out = np.empty((batch.num_rows, width), dtype="float32")
    j = 0
    for op in ops:
        column = batch.column(op[1])
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if op[0] == "number":
            out[:, j] = pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
            j += 1
        elif op[0] == "category":  # as CategoryCodes: each value's text looked up, once per distinct value
            lookup = {c: float(i) for i, c in enumerate(op[2])}
            out[:, j] = _per_distinct(column, lambda v, lookup=lookup: np.nan if v is None else lookup.get(str(v), np.nan))
            j += 1
        else:
            if pa.types.is_date(column.type):
                column = pc.cast(column, pa.timestamp("s"))
            if not pa.types.is_timestamp(column.type):
                raise TypeError(f"column {op[1]!r} is {column.type}, not a timestamp")
            for part in _ARROW_DATE_PARTS:
                out[:, j] = pc.cast(getattr(pc, part)(column), pa.float64()).to_numpy(zero_copy_only=False)
                j += 1
    return out


def _open_pieces(job: Job, store: Store, share: list[Piece], workdir: Path) -> dict[str, Path]:
    """Local paths of the files this share reads (store objects downloaded once, to disk, not memory)."""
    paths: dict[str, Path] = {}
    for piece in share:
        if piece.file in paths:
            continue
        if job.local_files:
            paths[piece.file] = Path(piece.file)
        else:
            local = workdir / f"{len(paths)}.parquet"
            store.download_file(piece.file, local)
            paths[piece.file] = local
    return paths


def _batches(job: Job, share: list[Piece], paths: Mapping[str, Path],
             transform: Callable[[Any], Any]) -> Iterator[tuple[Any, Any]]:
    """The share as (preprocessed features, labels) batches of at most ``job.batch_rows`` rows."""
    import pyarrow.parquet as pq

    columns = [*job.features, job.target]
    for piece in share:
        seen = 0
        # one thread: decoding the columns in parallel holds each column's pages at once, for no gain
        # while XGBoost's sketch is the slow part
        for batch in pq.ParquetFile(paths[piece.file]).iter_batches(
                batch_size=job.batch_rows, row_groups=[piece.row_group], columns=columns, use_threads=False):
            lo, hi = max(piece.start - seen, 0), min(piece.stop - seen, batch.num_rows)
            seen += batch.num_rows
            if lo >= hi:
                continue
            rows = batch.slice(lo, hi - lo)
            yield transform(rows), _labels(rows.column(job.target), job.target, job.classes)
            if seen >= piece.stop:
                break


def _transform(job: Job, store: Store) -> Callable[[Any], Any]:
    """How this worker turns an Arrow batch into XGBoost's input: ``native_ops`` in Arrow, else the pickled pipeline."""
    if job.native is not None:
        ops = job.native
        return lambda batch: arrow_features(batch, ops)
    import joblib

    prep = joblib.load(io.BytesIO(store.read(job.key("prep.joblib"))))
    return lambda batch: prep.transform(batch.select(job.features).to_pandas())


def _matrix(job: Job, share: list[Piece], paths: Mapping[str, Path], transform: Callable[[Any], Any]) -> Any:
    """A QuantileDMatrix built batch by batch: the share is never held whole, only its compressed bins."""
    import numpy as np
    import xgboost as xgb

    class Batches(xgb.DataIter):
        def __init__(self) -> None:
            self._it: Iterator[tuple[Any, Any]] | None = None
            super().__init__()

        def reset(self) -> None:
            self._it = None

        def next(self, input_data: Any) -> bool:
            if self._it is None:
                self._it = _batches(job, share, paths, transform)
            batch = next(self._it, None)
            if batch is None:
                return False
            X, y = batch
            weight = None if job.class_weights is None else np.asarray(job.class_weights)[y.astype("int64")]
            input_data(data=X, label=y, weight=weight, feature_types=job.feature_types)
            return True

    threads = job.params.get("nthread", job.params.get("n_jobs"))  # the estimator's, as its own fit builds its matrix
    return xgb.QuantileDMatrix(Batches(), max_bin=int(job.params.get("max_bin", 256)), nthread=threads,
                               enable_categorical=job.enable_categorical)


def import_xgboost(without_sklearn: bool) -> Any:
    """Import XGBoost, in a worker that applies ``native_ops`` without scikit-learn (and so without pandas).

    ``xgboost.compat`` imports scikit-learn whenever it is installed, for the estimators a worker
    never uses: about 100 MiB per worker, paid N times. Marking ``sklearn`` unimportable while
    XGBoost loads relies on compat's ``except ImportError`` fallback, so it is checked here: when
    an XGBoost release no longer imports that way, the worker fails with this sentence.
    """
    import importlib
    from importlib.metadata import version

    if not without_sklearn or "xgboost" in sys.modules or "sklearn" in sys.modules:
        return importlib.import_module("xgboost")
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # `import sklearn` raises ImportError
    try:
        return importlib.import_module("xgboost")
    except ImportError as exc:
        raise RuntimeError(f"xgboost {version('xgboost')} no longer imports without scikit-learn ({exc}); "
                           f"components/distributed_xgb.py import_xgboost relies on it") from exc
    finally:
        del sys.modules["sklearn"]


def _tracker(collective: Mapping[str, Any], workers: int) -> Any:
    """Rank 0's XGBoost tracker, listening where ``DMLC_TRACKER_URI``/``DMLC_TRACKER_PORT`` send the workers.

    Kubeflow Trainer's XGBoost runtime points every node at rank 0 and leaves starting the tracker
    to rank 0's code; the local engine and the container tier do the same, so one code path serves all.
    ``sortby="task"`` makes each worker's collective rank its ``DMLC_TASK_ID``: the share it reads.
    """
    import ipaddress

    from xgboost.tracker import RabitTracker

    uri = str(collective["dmlc_tracker_uri"])
    try:
        bind = uri if ipaddress.ip_address(uri).is_loopback else "0.0.0.0"  # the other pods must reach it
    except ValueError:  # a host name (a pod's DNS name): listen on the pod's addresses
        bind = "0.0.0.0"
    tracker = RabitTracker(n_workers=workers, host_ip=bind, port=int(collective["dmlc_tracker_port"]), sortby="task")
    tracker.start()
    return tracker


def train_worker(job: Job, rank: int, collective: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """Train this worker's share under the collective; rank 0 runs the tracker and writes the booster.

    ``collective`` holds the ``dmlc_*`` arguments of ``xgboost.collective.CommunicatorContext``
    (tracker address and port, task id) as the runtime gave them. Returns the worker's record.
    """
    xgb = import_xgboost(without_sklearn=job.native is not None)
    from xgboost import collective as coll

    store = open_store(job.store, settings)
    share = job.shares[rank]
    transform = _transform(job, store)
    started = time.perf_counter()
    tracker = _tracker(collective, job.workers) if rank == 0 else None
    try:
        with tempfile.TemporaryDirectory(prefix=f"flywheel-worker-{rank}-") as tmp, \
                coll.CommunicatorContext(dmlc_communicator="rabit", **collective):
            try:
                paths = _open_pieces(job, store, share, Path(tmp))
                matrix = _matrix(job, share, paths, transform)
                _release_arrow_memory()  # the batches are done with: only the matrix's bins stay
                booster = xgb.train(job.params, matrix, num_boost_round=job.rounds)
                if coll.get_rank() == 0:
                    store.write(job.key("model.ubj"), bytes(booster.save_raw("ubj")))
            except Exception:  # noqa: BLE001 - any failure ends this worker; its traceback is the parent's sentence
                # exit at once: leaving the collective would wait on the peers this failure strands,
                # and the parent names the worker whose failure came first (mark_failure)
                mark_failure()
                traceback.print_exc()
                sys.stderr.flush()
                shutil.rmtree(tmp, ignore_errors=True)
                os._exit(1)
        if tracker is not None:
            tracker.wait_for()
    finally:
        if tracker is not None:
            tracker.free()
    record = {"rank": rank, "rows": sum(p.stop - p.start for p in share), "peak_rss_kib": peak_rss_kib(),
              "seconds": round(time.perf_counter() - started, 3)}
    store.write(job.key(f"rank-{rank}.json"), json.dumps(record).encode())
    return record


def _release_arrow_memory() -> None:
    """Return what Arrow's allocator keeps cached from the read batches to the system, before training grows."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: ``python -m components.distributed_xgb <store> <job prefix>``, rank and tracker from DMLC_*."""
    from components.settings import ConfigError, collective_env, load_settings

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m components.distributed_xgb <store URI> <job prefix>", file=sys.stderr)
        return 2
    try:
        settings = load_settings(store=args[0])
        rank, workers, collective = collective_env()
    except ConfigError as exc:
        print(f"flywheel worker: {exc}", file=sys.stderr)
        return 2
    job = Job.from_json(open_store(args[0], settings).read(f"{args[1]}/job.json"))
    if workers != job.workers:
        print(f"flywheel worker: DMLC_NUM_WORKER is {workers} but job {args[1]} has "
              f"{job.workers} shares", file=sys.stderr)
        return 2
    try:
        train_worker(job, rank, collective, settings)
    except BaseException:
        mark_failure()
        raise
    return 0


def mark_failure() -> None:
    """Write when this worker failed to its log (stderr). When one worker fails the others fail too,
    inside the collective; the parent names the worker whose first mark is the earliest."""
    print(f"{FAILED_AT} {time.time():.6f}", file=sys.stderr, flush=True)


# --- the embedded engine: N local processes and XGBoost's tracker -----------------------------


def worker_command(job: Job) -> list[str]:
    """The command every worker runs (a local process, a container, a TrainJob pod)."""
    return [sys.executable, "-m", "components.distributed_xgb", job.store, job.prefix]


def dmlc_env(rank: int, workers: int, tracker_uri: str, tracker_port: int) -> dict[str, str]:
    """The ``DMLC_*`` variables a worker is started with, named as the Trainer's XGBoost runtime injects them."""
    return {"DMLC_TRACKER_URI": tracker_uri, "DMLC_TRACKER_PORT": str(tracker_port), "DMLC_TASK_ID": str(rank),
            "DMLC_NUM_WORKER": str(workers)}


# How long the other workers get, after the first failure, to fail by themselves (a peer's loss
# ends their collective call) so that the one that failed first can be named; then they are killed.
FAILURE_GRACE_SECONDS = 5.0
FAILED_AT = "flywheel worker failed at"


def run_local(job: Job, settings: Settings, timeout_seconds: float, base_env: Mapping[str, str]) -> Outcome:
    """Run the job's workers as local processes, rank 0 running XGBoost's tracker; raise TrainingFailed naming a failed one.

    A worker that exits with an error (or is killed) ends the others within FAILURE_GRACE_SECONDS:
    the survivors would otherwise wait for it inside an allreduce until the tracker's timeout. The
    failure named is the one that happened first (the worker's own mark, else when its exit was
    seen), not the peers that failed because of it.
    """
    import select
    import subprocess

    port = free_port()
    env = settings.to_env(base_env)  # the parent's environment (PATH, PYTHONPATH) with these settings
    procs: dict[int, subprocess.Popen[bytes]] = {}
    logs: dict[int, Any] = {}
    failed: list[tuple[float, str]] = []  # (when it failed, the sentence naming it)
    timed_out = False
    try:
        for rank in range(job.workers):
            logs[rank] = tempfile.TemporaryFile()
            procs[rank] = subprocess.Popen(
                worker_command(job), stdout=logs[rank], stderr=subprocess.STDOUT,
                env={**env, **dmlc_env(rank, job.workers, "127.0.0.1", port)})
        fds = {os.pidfd_open(p.pid): rank for rank, p in procs.items()}
        deadline = time.monotonic() + timeout_seconds
        while fds:
            left = deadline - time.monotonic()
            ready = select.select(list(fds), [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                timed_out = not failed
                break
            for fd in ready:
                rank = fds.pop(fd)
                os.close(fd)
                code = procs[rank].wait()
                if code != 0:
                    failed.append((_failed_at(logs[rank]) or time.time(),
                                   f"distributed training worker rank {rank} (pid {procs[rank].pid}) of job {job.prefix} "
                                   f"{_exit(code)}: {_tail(logs[rank])}"))
                    deadline = min(deadline, time.monotonic() + FAILURE_GRACE_SECONDS)
        for fd in fds:
            os.close(fd)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs.values():
            f.close()
    if failed:
        raise TrainingFailed(min(failed)[1])
    if timed_out:
        raise TrainingFailed(f"distributed training job {job.prefix} did not finish within {timeout_seconds:g} s")
    return collect(job, open_store(job.store, settings), ENGINE_LOCAL)


def _failed_at(log: Any) -> float | None:
    """When a worker failed, by the first mark it wrote (``mark_failure``; None: it was killed, or failed before it could say)."""
    log.seek(0)
    for line in log.read().decode(errors="replace").splitlines():
        if line.startswith(FAILED_AT):
            return float(line.removeprefix(FAILED_AT))
    return None


def _exit(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


_RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*")


def _tail(log: Any, limit: int = 400) -> str:
    """The worker's error: its last ``SomeError: …`` line (XGBoost's native errors end with a stack trace), else its last line."""
    log.seek(0)
    lines = [ln.strip() for ln in log.read().decode(errors="replace").splitlines() if ln.strip()]
    raised = [ln for ln in lines if _RAISED.match(ln)]
    return (raised[-1] if raised else lines[-1] if lines else "no output")[:limit]


def collect(job: Job, store: Store, engine: str) -> Outcome:
    """The booster rank 0 wrote and every worker's record; TrainingFailed naming what is missing."""
    from components.store import NotFound

    try:
        booster = store.read(job.key("model.ubj"))
    except NotFound:
        raise TrainingFailed(f"distributed training job {job.prefix} ended without rank 0's model") from None
    workers = []
    for rank in range(job.workers):
        try:
            workers.append(json.loads(store.read(job.key(f"rank-{rank}.json"))))
        except NotFound:
            raise TrainingFailed(f"distributed training worker rank {rank} of job {job.prefix} left no record") from None
    return Outcome(booster, workers, engine)


# --- the coordinator: the refit step ----------------------------------------------------------


def sample_parquet(files: list[str], columns: list[str], max_rows: int, seed: int) -> pa.Table:
    """At most ``max_rows`` rows drawn evenly from every batch of the files: memory bounded by the sample."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    rng = np.random.default_rng(seed)
    fraction = min(1.0, max_rows / max(total, 1))
    parts = []
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=columns):
            parts.append(batch if fraction >= 1 else batch.filter(pa.array(rng.random(batch.num_rows) < fraction)))
    return pa.Table.from_batches(parts) if parts else pq.ParquetFile(files[0]).schema_arrow.empty_table().select(columns)


def checked_native_ops(prep: Any, sample: pa.Table, frame: pd.DataFrame) -> list[list[Any]] | None:
    """``native_ops`` of ``prep`` when ``arrow_features`` gives, on the sample (``frame`` is it in pandas), exactly
    what ``prep`` gives XGBoost (float32, missing where it is missing); else None: the workers apply the pickled ``prep``."""
    import numpy as np
    import pyarrow as pa

    ops = native_ops(prep)
    if ops is None or sample.num_rows == 0:
        return None
    expected = np.asarray(prep.transform(frame), dtype="float32")
    try:
        got = arrow_features(sample.combine_chunks().to_batches()[0], ops)
    except (TypeError, pa.ArrowException):  # a column Arrow does not read as the pipeline does (a date as text)
        return None
    return ops if np.array_equal(expected, got, equal_nan=True) else None


def prepare(template: Pipeline, train_files: list[str], schema: Schema, settings: Settings, workers: int,
            job_name: str, sample_rows: int, balanced_classes: bool = False) -> tuple[Job, Any, pd.DataFrame]:
    """Fit the model's preprocessing on a sample and write the job to the store; returns (job, fitted prep, sample).

    ``balanced_classes``: weight each row by its class to balance the classes over all workers' rows
    (as an estimator fit with balanced sample weights in one process).

    The training files are local Parquet files (the refit step's input); on a cluster they are
    uploaded under the job's prefix so the pods can read them, and removed with the job.
    """
    import joblib
    import pyarrow.parquet as pq
    from sklearn.base import clone

    from components.features import xy

    store = open_store(settings.store, settings)
    prefix = f"{JOB_PREFIX}/{settings.model}/{job_name}"
    table = sample_parquet(train_files, [*schema.feature_names, schema.target], sample_rows, settings.seed)
    sample = table.to_pandas()
    prep = clone(template[:-1])
    prep.fit(*xy(sample, schema))
    native = checked_native_ops(prep, table, sample)
    del table
    if native is None:  # the workers unpickle the preprocessing
        buf = io.BytesIO()
        joblib.dump(prep, buf)
        store.write(f"{prefix}/prep.joblib", buf.getvalue())
    local = settings.runner == "local" and store.uri.startswith("file://")
    names: list[str] = []
    for i, f in enumerate(train_files):
        if local:
            names.append(str(Path(f).resolve()))
        else:
            names.append(f"{prefix}/train-{i}.parquet")
            store.upload_file(f, names[-1])
    row_groups = [(name, [pq.ParquetFile(f).metadata.row_group(g).num_rows
                          for g in range(pq.ParquetFile(f).metadata.num_row_groups)])
                  for name, f in zip(names, train_files, strict=True)]
    estimator = template.steps[-1][1]
    params, rounds, categorical = booster_params(estimator, schema.classes)
    balanced = balanced_classes and schema.classes is not None
    job = Job(store=store.uri, prefix=prefix, shares=plan_shares(row_groups, workers), features=schema.feature_names,
              target=schema.target, classes=schema.classes, params=params, rounds=rounds,
              enable_categorical=categorical, feature_types=getattr(estimator, "feature_types", None),
              class_weights=balanced_weights(train_files, schema.target, schema.classes) if balanced else None,
              local_files=local, native=native)
    store.write(job.key("job.json"), job.to_json().encode())
    return job, prep, sample


def assemble(template: Pipeline, prep: Any, booster: bytes, classes: list[Any] | None = None) -> Pipeline:
    """The fitted model: the fitted preprocessing followed by the template's estimator holding the trained booster.

    A classifier's ``labels_`` are the schema's classes, in the order the workers coded them
    (an estimator that maps its predictions back to labels reads them; XGBoost's own ignores them).
    """
    import numpy as np
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    estimator = clone(template.steps[-1][1])
    estimator.load_model(bytearray(booster))
    if classes is not None:
        estimator.labels_ = np.asarray(classes)
    return Pipeline([*prep.steps, (template.steps[-1][0], estimator)])


def distributed_refit(template: Pipeline, train_files: list[str], schema: Schema, settings: Settings, job_name: str,
                      base_env: Mapping[str, str] | None = None,
                      balanced_classes: bool = False) -> tuple[Pipeline, Outcome, pd.DataFrame]:
    """Refit ``template`` (an XGBoost pipeline) on the training files with ``settings.train_workers`` workers.

    Embedded runner: local processes under XGBoost's tracker; ``runner: kfp``: a Kubeflow Trainer
    TrainJob. Returns the fitted pipeline, what the workers did, and the preprocessing's sample
    (the reference rows come from it). The job's objects are removed whether it succeeded or not.
    """
    job, prep, sample = prepare(template, train_files, schema, settings, settings.train_workers, job_name,
                                settings.max_train_rows, balanced_classes)
    try:
        if settings.runner == "kfp":
            from components import trainjob

            outcome = trainjob.run(job, settings)
        else:
            outcome = run_local(job, settings, settings.train_timeout_seconds, base_env or {})
        return assemble(template, prep, outcome.booster, schema.classes), outcome, sample
    finally:
        remove_job(job, settings)


def remove_job(job: Job, settings: Settings) -> None:
    """Delete the job's objects (its inputs, the booster, the records): the version keeps what it needs."""
    store = open_store(job.store, settings)
    for key in store.list(job.prefix):
        store.delete(key)


if __name__ == "__main__":
    raise SystemExit(main())
