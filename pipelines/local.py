"""Run the training pipeline on the embedded default: KFP's own local runner (kfp.local)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from components.data import DataError, DatasetSpec, resolve
from components.ingest import fingerprint_of
from components.registry import Registry
from components.runtime import run_key
from components.settings import Settings
from components.store import NotFound, open_store


class PipelineFailed(RuntimeError):
    """The pipeline run failed; the message is the failing step's one-sentence reason."""


def new_run_name(model: str) -> str:
    return f"{model}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def pipeline_arguments(spec: DatasetSpec, settings: Settings, run: str, store_uri: str) -> dict[str, Any]:
    """The pipeline parameters for a dataset and the settings (shared with KFP submission)."""
    return {
        "source": spec.source, "target": spec.target, "task": spec.task or "", "timestamp": spec.timestamp or "",
        "id_columns": list(spec.id_columns), "exclude": list(spec.exclude), "run": run, "store": store_uri,
        "model": settings.model, "holdout_fraction": settings.holdout_fraction, "cv_folds": settings.cv_folds,
        "seed": settings.seed, "max_train_rows": settings.max_train_rows, "promotion_margin": settings.promotion_margin,
    }


def preflight(spec: DatasetSpec, settings: Settings) -> str:
    """Fail fast, with one sentence, on a bad store, a missing file or a wrong target name."""
    open_store(settings.store, settings)
    src = resolve(spec.source, settings)
    from components.data import read_source

    head = read_source(type(src)(src.files[:1], src.fingerprint, src.store_uri), settings)
    if head.empty:
        raise DataError(f"{src.files[0]} has no rows")
    columns = [str(c).strip() for c in head.columns]
    if spec.target not in columns:
        raise DataError(f"target column {spec.target!r} is not in {src.files[0]} (columns: {', '.join(columns[:20])})")
    for col in (*spec.exclude, *spec.id_columns, *([spec.timestamp] if spec.timestamp else [])):
        if col not in columns:
            raise DataError(f"column {col!r} is not in {src.files[0]}")
    return fingerprint_of(src, spec)  # the files were hashed once, by resolve()


def _local_source(spec: DatasetSpec) -> DatasetSpec:
    """Absolute local paths, since kfp.local tasks run in their own working folder."""
    p = Path(spec.source).expanduser()
    if "://" not in spec.source and p.exists():
        return DatasetSpec(**{**spec.__dict__, "source": str(p.resolve())})
    return spec


def _store_uri(settings: Settings) -> str:
    if settings.store.startswith("s3://"):
        return settings.store
    return str(Path(settings.store.removeprefix("file://")).expanduser().resolve())


def run_training(spec: DatasetSpec, settings: Settings, run_name: str | None = None, quiet: bool = True) -> dict[str, Any]:
    """Run the whole training pipeline locally; returns the version and the promotion decision.

    Raises DataError/StoreError/PipelineFailed with one sentence naming the file, column or setting.
    """
    from kfp import local

    from pipelines.training import training_pipeline

    spec = _local_source(spec)
    fp = preflight(spec, settings)
    store_uri = _store_uri(settings)
    run = run_name or new_run_name(settings.model)
    root = Path(settings.pipeline_root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=False,
               enable_caching=True)
    env = {"FLYWHEEL_STORE": store_uri, "FLYWHEEL_MODEL": settings.model, **model_threads()}
    with _captured(echo=not quiet) as log, _env(env):
        training_pipeline(**pipeline_arguments(spec, settings, run, store_uri))
    text = _ANSI.sub("", log.getvalue())
    hits = re.findall(r"Task (\S+) cache hit", text)
    return {**_outcome(settings, run, fp, text), "cache_hits": hits}


# kfp.local runs at most two ParallelFor iterations at once (its ParallelExecutor's cap)
LOCAL_PARALLEL_TASKS = 2
MODEL_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def model_threads() -> dict[str, str]:
    """Compute threads per task: the CPUs shared by the tasks that run at once (the user's value wins).

    Without a limit each search task's OpenMP pool (HistGradientBoosting) takes every CPU,
    and two of them at once spend their time handing work between threads.
    """
    n = str(max(1, (os.cpu_count() or 1) // LOCAL_PARALLEL_TASKS))
    return {name: os.environ.get(name, n) for name in MODEL_THREAD_ENV}


# the message and its "  - ..." lines: a refusal lists every error, one line each
_RAISED = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Failed|Exception|Conflict)): (.+(?:\n[ \t]+- .+)*)$", re.M)


def _reason_from_log(text: str) -> str | None:
    """The last exception a task raised, from kfp.local's captured task output."""
    found = _RAISED.findall(text)
    return f"{found[-1][1]}" if found else None


def _outcome(settings: Settings, run: str, fp: str, log: str = "") -> dict[str, Any]:
    store = open_store(settings.store, settings)
    key = run_key(settings.model, run)
    try:
        status = json.loads(store.read(f"{key}/status.json"))
    except NotFound:
        raise PipelineFailed(f"pipeline run {run} ended without a status record in {store.uri}") from None
    if status["state"] != "SUCCEEDED":
        err = status.get("error")
        if err:
            raise PipelineFailed(f"step {err['step']} failed: {err['error']}")
        failed = re.findall(r"Task '?([\w-]+)'? finished with status FAILURE", log)
        reason = _reason_from_log(log) or status.get("kfp_error") or "see the task logs (--verbose)"
        raise PipelineFailed(f"step {failed[0] if failed else '?'} failed: {reason}")
    reg = Registry(store, settings.model)
    decision = None
    for version in reversed(reg.versions()):
        d = reg.decision(version)
        if d and d.get("run_id") == run:
            decision, cached = d, False
            break
    if decision is None:  # register was cached or found the same data's version: nothing new
        for version in reversed(reg.versions()):
            if reg.manifest(version).get("fingerprint") == fp:
                decision, cached = reg.decision(version), True
                break
    if decision is None:
        raise PipelineFailed(f"pipeline run {run} succeeded but registered no version")
    champ = reg.champion()
    return {**decision, "run": run, "cached": cached, "fingerprint": fp, "champion": champ.version if champ else None}


@contextlib.contextmanager
def _env(values: dict[str, str]):
    """kfp.local tasks inherit the environment: hand them the store the caller chose."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Tee(io.StringIO):
    def __init__(self, echo: Any) -> None:
        super().__init__()
        self.echo = echo

    def write(self, text: str) -> int:
        if self.echo is not None:
            self.echo.write(text)
        return super().write(text)


@contextlib.contextmanager
def _captured(echo: bool):
    """kfp.local narrates every task on stdout (cache hits included): keep it, show it on --verbose."""
    sink = _Tee(sys.stdout if echo else None)
    # kfp.local logs cache hits from its orchestrator, outside its own logger context: listen at INFO
    root, handler = logging.getLogger(), logging.StreamHandler(sink)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink if not echo else sys.stderr):
            yield sink
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


