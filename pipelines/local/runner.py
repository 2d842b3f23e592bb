"""Run the training pipeline on the embedded default: KFP's own local runner (kfp.local).

The run happens in a child process (``pipelines/local/kfp_local.py``): kfp.local's console
output and logger changes stay there, so this is safe to call from any thread. How the
run went is read from the store: ``runs/<model>/<run>/status.json`` (written by the exit
handler) and the step records ``runs/<model>/<run>/steps/<step>.json`` (components/status.py).
A cacheable step without a record in a succeeded run was served from kfp.local's cache.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from components import compat
from components import status as steps
from components.data import DatasetSpec
from components.ingest import fingerprint_of, preview
from components.registry import Registry
from components.runtime import run_key
from components.settings import MODEL_THREAD_ENV, Settings
from components.sources import Located, locate
from components.store import NotFound, open_store
from pipelines.local import retention
from pipelines.local.kfp_local import COMPAT_EXIT
from pipelines.settings_routes import RUN_PARAMETERS


class PipelineFailed(RuntimeError):
    """The pipeline run failed; the message is the failing step's one-sentence reason."""


def new_run_name(model: str) -> str:
    return f"{model}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _parameter(value: Any) -> Any:
    """A setting as a pipeline parameter: an unset one (None) is the parameter's empty default."""
    return "" if value is None else value


def pipeline_arguments(spec: DatasetSpec, settings: Settings, run: str, store_uri: str) -> dict[str, Any]:
    """The pipeline parameters for a dataset and the settings (shared with KFP submission): the
    dataset, the run, and the settings a run takes from whoever starts it (``RUN_PARAMETERS``)."""
    return {
        "source": spec.source, "target": spec.target, "task": spec.task or "", "timestamp": spec.timestamp or "",
        "id_columns": list(spec.id_columns), "exclude": list(spec.exclude), "run": run, "store": store_uri,
        "model": settings.model,
        **{name: _parameter(getattr(settings, name)) for name in RUN_PARAMETERS if name not in SEARCH_PARAMETERS},
        # only when there are parts: a package compiled before the parameter existed still takes every other run
        **({"additions": list(spec.additions)} if spec.additions else {}),
        **search_arguments(settings),
    }


# The search budget and space: run parameters given only when set (unset: the pipeline's defaults, 0 and {}).
SEARCH_PARAMETERS = ("trials", "time_budget_minutes", "search_space")


def search_arguments(settings: Settings) -> dict[str, Any]:
    """The search's run parameters: the budget, and the search space file's content (checked here, so a
    bad file fails before a run starts, naming the file, family and parameter)."""
    from components import search_space

    args: dict[str, Any] = {}
    if settings.trials is not None:
        args["trials"] = settings.trials
    if settings.time_budget_minutes is not None:
        args["time_budget_minutes"] = settings.time_budget_minutes
    if settings.search_space:
        args["search_space"] = search_space.load_data(settings.search_space)
    return args


def preflight(spec: DatasetSpec, settings: Settings, located: Located | None = None) -> str:
    """Fail fast, with one sentence, on a bad store, a missing file or a wrong column name; returns the
    fingerprint. ``located``: the caller's resolution of the source (resolved here when not given);
    the checks read a bounded sample of the first file (``ingest.preview``), none on an unchanged re-run."""
    open_store(settings.store, settings)
    located = located or locate(spec, settings)
    preview(spec, located, settings)
    return fingerprint_of(located, spec)


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


# Steps kfp.local may serve from its cache; with no record in a succeeded run, they were.
CACHEABLE = ("ingest", "validate", "features", "search-space", "train", "refit", "evaluate")


def child_environment(settings: Settings, run: str, store_uri: str) -> dict[str, str]:
    """The environment of the kfp.local process: the caller's, with its settings variables replaced by ``settings``.

    kfp.local's task processes inherit it, and each builds its settings from it, so a task
    sees exactly the caller's settings (and the run its status records belong to).
    """
    root = settings.pipeline_root if "://" in settings.pipeline_root else str(Path(settings.pipeline_root).expanduser().resolve())
    return settings.model_copy(update={"store": store_uri, "run": run, "pipeline_root": root}).to_env(os.environ) | model_threads(
        compat.local_parallel_tasks(settings.local_search_packing))


def model_threads(parallel_tasks: int | None = compat.LOCAL_PARALLEL_TASKS) -> dict[str, str]:
    """Compute threads per task: the CPUs shared by the tasks that run at once (the user's value wins).

    Without a limit each search task's OpenMP pool (HistGradientBoosting) takes every CPU,
    and two of them at once spend their time handing work between threads. None (the search
    not packed): no limit is set.
    """
    if parallel_tasks is None:
        return {}
    n = str(max(1, (os.cpu_count() or 1) // parallel_tasks))
    return {name: os.environ.get(name, n) for name in MODEL_THREAD_ENV}


def run_training(spec: DatasetSpec, settings: Settings, run_name: str | None = None, quiet: bool = True,
                 located: Located | None = None) -> dict[str, Any]:
    """Run the whole training pipeline locally; returns the version and the promotion decision.

    kfp.local runs in a child process (its console output goes to ``<pipeline_root>/logs/<run>.log``,
    or to this terminal when not quiet); the outcome is read from the run's step records.
    Raises DataError/StoreError/PipelineFailed with one sentence naming the file, column or setting, and
    CompatError naming the library internal (and the setting that runs without it) that kfp.local's process found broken.
    """
    spec = _local_source(spec)
    fp = preflight(spec, settings, located)
    store_uri = _store_uri(settings)
    run = run_name or new_run_name(settings.model)
    root = Path(settings.pipeline_root).expanduser().resolve()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    log_path = root / "logs" / f"{run}.log"
    # the search in as many tasks as kfp.local runs at once (a cluster run keeps one task per family: 0)
    tasks = compat.local_parallel_tasks(settings.local_search_packing) or 0
    arguments = json.dumps(pipeline_arguments(spec, settings, run, store_uri) | {"search_tasks": tasks})
    with open(log_path, "wb") as log:
        out = None if not quiet else log
        code = subprocess.call([sys.executable, "-m", "pipelines.local.kfp_local", str(root), arguments],
                               env=child_environment(settings, run, store_uri), stdout=out, stderr=out)
    retention.prune(root, retention.budget_bytes(settings.pipeline_root_max_gib))  # uncached runs do not fill the disk
    if code == COMPAT_EXIT:  # the child's check failed: the same check here raises its CompatError
        compat.check_local_runner(settings.warm_tasks, settings.local_search_packing)
    if code != 0:
        raise PipelineFailed(f"the kfp.local process of run {run} exited with code {code}; see {log_path}")
    return _outcome(settings, run, fp, log_path)


def _outcome(settings: Settings, run: str, fp: str, log_path: Path) -> dict[str, Any]:
    store = open_store(settings.store, settings)
    key = run_key(settings.model, run)
    records = steps.read_all(store, settings.model, run)
    try:
        status = json.loads(store.read(f"{key}/status.json"))
    except NotFound:
        raise PipelineFailed(f"pipeline run {run} ended without a status record in {store.uri}; see {log_path}") from None
    if status["state"] != "SUCCEEDED":
        failed = steps.first_failure(records)
        if failed:
            raise PipelineFailed(f"step {failed.step} failed: {failed.reason}")
        reason = status.get("kfp_error") or "no step recorded a failure"
        raise PipelineFailed(f"pipeline run {run} ended {status['state']}: {reason}; see {log_path}")
    hits = [name for name in CACHEABLE if not any(r == name or r.startswith(f"{name}-") for r in records)]
    reg = Registry(store, settings.model)
    decision = None
    for version in reversed(reg.versions()):
        d = reg.decision(version)
        if d and d.get("run_id") == run:
            decision, cached = d, False
            break
    if decision is None:  # register found the same data's version: nothing new was registered
        for version in reversed(reg.versions()):
            if reg.manifest(version).get("fingerprint") == fp:
                earlier = reg.decision(version) or {}
                decision = {**earlier, "version": version, "promoted": False,
                            "reason": f"nothing new: the same data gave {version} before (run {earlier.get('run_id', '?')})"}
                cached = True
                break
    if decision is None:
        raise PipelineFailed(f"pipeline run {run} succeeded but registered no version")
    champ = reg.champion()
    return {**decision, "run": run, "cached": cached, "registered": not cached, "fingerprint": fp,
            "champion": champ.version if champ else None, "cache_hits": hits, "log": str(log_path)}
