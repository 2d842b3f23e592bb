"""What every KFP component body shares: settings from parameters, and error records.

A component body is three lines: build settings, call the stage, write outputs. The stage
runs through ``guarded``, which records how the step ended in the store
(``runs/<model>/<run>/steps/<step>.json``, see components/status.py) so the runner can say
which step failed and why instead of printing a stack trace.
"""

from __future__ import annotations

import atexit
import gc
import json
from collections.abc import Callable
from typing import Any, TypeVar

from components.settings import Settings, load_settings
from components.sources import DatasetSpec
from components.store import open_store

T = TypeVar("T")

_freezing_at_exit = False


def _task_process() -> None:
    """This process is a task: it ends right after its stage, so freeze the heap at its exit.

    A task is a process of its own (a new interpreter, or forked from the embedded runner's
    task server). Freezing the heap at exit spares the interpreter's final garbage collections
    over every object its imports made (pandas, scikit-learn: about 0.2 s a task); the process
    is ending, so nothing is kept longer. Only a component body's stage gets here (``guarded``,
    ``cached_step``): a process that merely imports this module (the CLI, the monitor) is left alone.
    """
    global _freezing_at_exit
    if not _freezing_at_exit:
        atexit.register(gc.freeze)
        _freezing_at_exit = True


def settings(store: str, model: str, **extra: Any) -> Settings:
    return load_settings(store=store, model=model, **extra)


def spec(source: str, target: str, task: str, timestamp: str, id_columns: list, exclude: list, name: str,
         additions: list | None = None) -> DatasetSpec:
    return DatasetSpec(
        source=source, target=target, task=task or None, timestamp=timestamp or None,  # type: ignore[arg-type]
        id_columns=tuple(id_columns), exclude=tuple(exclude), name=name, additions=tuple(additions or ()),
    )


# KFP's placeholder for the pipeline job's id: the backend resolves it only as a task's whole
# input value, so the steps that record under the run take it as ``job`` and substitute it.
JOB_ID = "{{$.pipeline_job_uuid}}"


def run_id(run: str, job: str) -> str:
    """The run's name with KFP's job id in place of the placeholder (a schedule's runs: one id each)."""
    return run.replace(JOB_ID, job) if job and JOB_ID in run else run


def run_key(model: str, run: str) -> str:
    return f"runs/{model}/{run}"


def record_dataset(settings: Settings, run: str, spec: DatasetSpec, fingerprint: str) -> None:
    """What this run trains on, so a version can say it and a retrain can read the same source."""
    from dataclasses import asdict

    body = {**asdict(spec), "fingerprint": fingerprint}
    open_store(settings.store, settings).write(f"{run_key(settings.model, run)}/dataset.json", json.dumps(body).encode())


def recorded_dataset(settings: Settings, run: str) -> dict[str, Any] | None:
    from components.store import NotFound

    try:
        return json.loads(open_store(settings.store, settings).read(f"{run_key(settings.model, run)}/dataset.json"))
    except NotFound:
        return None


def spec_of(dataset: dict[str, Any]) -> DatasetSpec:
    """The DatasetSpec a version recorded (manifest["dataset"])."""
    fields = {k: dataset[k] for k in ("source", "target", "task", "timestamp", "name") if k in dataset}
    return DatasetSpec(**fields, id_columns=tuple(dataset.get("id_columns", ())), exclude=tuple(dataset.get("exclude", ())),
                       additions=tuple(dataset.get("additions", ())))


def guarded(settings: Settings, run: str | None, step: str, fn: Callable[[], T], key: str | None = None) -> T:
    """Run a stage and record how it ended (``runs/<model>/<run>/steps/<step>.json``); re-raise failures."""
    from components.status import run_step

    _task_process()
    return run_step(settings, run, step, fn, key)


def cached_step(step: str, fn: Callable[[], T], settings_: Settings | None = None, **inputs: Any) -> T:
    """Run a cached step's stage and record it under the run named by the ``run`` setting.

    Cached steps cannot take the run as an input (every cache key would differ); the embedded
    runner names it through the settings of the process that runs the pipeline.
    """
    from components.status import cache_key, run_step

    _task_process()
    s = settings_ or load_settings()
    return run_step(s, s.run, step, fn, cache_key(**inputs) if inputs else None)
