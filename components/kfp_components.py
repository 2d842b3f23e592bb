"""The KFP v2 components: one thin wrapper per stage.

Each body imports the project (installed in the component image, and in the host
interpreter for ``kfp.local``) and calls the pure stage function. Data flows as KFP
artifacts; every cached step takes the data fingerprint as an input, and no cached step
takes the run name (it would make every cache key unique). Every step records how it ended
under the run (components/status.py): the steps that run every time know the run from their
inputs, the cached ones from the ``run`` setting the embedded runner gives its process.
"""


from typing import NamedTuple

from kfp import dsl
from kfp.dsl import (
    HTML,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

# Replaced at compile time by `flywheel compile --image`; kfp.local runs it in the host interpreter.
COMPONENT_IMAGE = "ghcr.io/flywheel/flywheel-components:0.1.0"


def component(fn):
    return dsl.component(fn, base_image=COMPONENT_IMAGE, install_kfp_package=False)


@component
def fingerprint(source: str, target: str, task: str, timestamp: str, id_columns: list, exclude: list,
                additions: list, store: str, model: str, run: str,
                job: str = "") -> NamedTuple("Fingerprint", [("digest", str), ("located", str)]):
    """The run's one resolution of the source and its added parts (metadata only: no data rows),
    and its digest; never cached, so changed data is always seen. Ingest reads what it resolved."""
    from collections import namedtuple

    from components import ingest, runtime

    s, run = runtime.settings(store, model), runtime.run_id(run, job)
    spec = runtime.spec(source, target, task, timestamp, id_columns, exclude, model, additions)
    digest, located = runtime.guarded(s, run, "fingerprint", lambda: ingest.fingerprint(spec, s))
    runtime.record_dataset(s, run, spec, digest)  # register copies it into the version's manifest
    return namedtuple("Fingerprint", ["digest", "located"])(digest, located.to_json())


@component
def champion(store: str, model: str, run: str, fingerprint: str,
             job: str = "") -> NamedTuple("Champion", [("version", str), ("warm_start", str)]):
    """The champion version right now ('' for none), and the one the search warm-starts from: the
    champion when it was trained on other data than ``fingerprint``'s, else '' (a re-run on the
    same data keeps the search's cache key, so it is served from the cache). Never cached."""
    from collections import namedtuple

    from components import runtime
    from components.registry import Registry
    from components.store import open_store

    s, run = runtime.settings(store, model), runtime.run_id(run, job)

    def look() -> tuple[str, str]:
        reg = Registry(open_store(s.store, s), s.model)
        current = reg.champion()
        if current is None:
            return "", ""
        return current.version, "" if reg.manifest(current.version).get("fingerprint") == fingerprint else current.version

    return namedtuple("Champion", ["version", "warm_start"])(*runtime.guarded(s, run, "champion", look))


@component
def ingest(source: str, target: str, task: str, timestamp: str, id_columns: list, exclude: list, additions: list,
           store: str, model: str, fingerprint: str, located: str,
           dataset: Output[Dataset]) -> NamedTuple("Ingested", [("schema", str), ("rows", int)]):
    """Read and normalise the data the fingerprint step resolved (``located``: the source, then its
    added parts) into a Parquet dataset; returns the schema (JSON)."""
    from components import ingest as stage
    from components import runtime
    from components.sources import Located

    s = runtime.settings(store, model)
    spec = runtime.spec(source, target, task, timestamp, id_columns, exclude, model, additions)
    result = runtime.cached_step("ingest", lambda: stage.ingest(spec, s, Located.from_json(located)), s,
                                 fingerprint=fingerprint)
    from components.store import write_parquet_file

    write_parquet_file(result.table, dataset.path)
    rows = result.table.num_rows
    dataset.metadata.update({"rows": rows, "fingerprint": fingerprint, "files": len(result.files)})
    from collections import namedtuple

    return namedtuple("Ingested", ["schema", "rows"])(result.schema.to_json(), rows)


@component
def validate(dataset: Input[Dataset], schema: str, store: str, model: str, champion: str,
             report: Output[Markdown]) -> str:
    """The data-quality gate: fails the run naming the column; returns warnings (JSON)."""
    import json

    import pyarrow.parquet as pq

    from components import runtime
    from components import validate as stage
    from components.data import Schema
    from components.registry import Registry
    from components.store import open_store

    s = runtime.settings(store, model)
    sch = Schema.from_json(schema)

    def check():
        champ = Registry(open_store(s.store, s), s.model).schema(champion) if champion else None
        columns = [*sch.feature_names, sch.target]  # the columns it checks, as Arrow: no pandas copy
        result = stage.validate(pq.read_table(dataset.path, columns=columns), sch, champ)
        with open(report.path, "w") as f:
            f.write(result.markdown())
        result.raise_for_errors()
        return json.dumps(result.warnings)

    return runtime.cached_step("validate", check, s, dataset=dataset.uri, champion=champion)


@component
def features(dataset: Input[Dataset], schema: str, holdout_fraction: float, seed: int,
             train: Output[Dataset], holdout: Output[Dataset]):
    """Split (time-aware when a timestamp exists) into training and holdout rows."""
    from components import runtime
    from components import split as stage
    from components.data import Schema

    sch = Schema.from_json(schema)
    tr, ho = runtime.cached_step("features", lambda: stage.split_file(dataset.path, sch, holdout_fraction, seed, train.path,
                                                                      holdout.path),
                                 dataset=dataset.uri, holdout_fraction=holdout_fraction, seed=seed)
    train.metadata["rows"], holdout.metadata["rows"] = tr, ho
    train.metadata["schema"] = schema  # self-describing: the search fan-out reads it from here


@component
def search_space(schema: str, tasks: int = 0, space: dict = {}, trials: int = 0, minutes: float = 0.0,
                 champion: str = "", families: str = "") -> list:
    """The model families of the task, each with its space, default candidates, the budget and the champion
    (a warm start): one fan-out task each (``tasks`` > 0: packed into at most that many tasks, as many as
    the runner runs at once). ``space`` is the run's search space (empty: the project's),
    ``trials``/``minutes`` its budget (0: unset), ``families`` only these (comma-separated; empty: all).
    The champion rides in the items because kfp.local (2.17) hands a ParallelFor body the loop item in
    place of any other task's output."""
    import json

    from components import runtime
    from components import search_space as spaces
    from components import train as stage

    fields = schema if isinstance(schema, dict) else json.loads(schema)  # kfp.local may hand it decoded

    def plan() -> list:
        chosen = spaces.parse(space, "(the run's search_space parameter)") if space else None
        groups = stage.families(fields["task"], tasks, chosen, only=families)
        # the trials are shared among the families searched: those the groups hold
        budget = {"trials": trials, "minutes": minutes, "families": sum(len(g["spaces"]) for g in groups)}
        return [{**g, "budget": budget, "champion": champion} for g in groups]

    return runtime.cached_step("search-space", plan, schema=schema, tasks=tasks, space=space, trials=trials, minutes=minutes,
                               champion=champion, families=families)


@component
def train(train: Input[Dataset], family: dict, folds: int, seed: int, max_rows: int, store: str, model: str,
          memory_mb: int, metrics: Output[Metrics]) -> str:
    """Tune one search task's model families (Optuna, components/tune.py); returns the trial records (JSON).

    It reads a sample of at most ``max_rows`` training rows (``search_rows`` in its metrics), never the
    table. A family whose refit would not fit ``memory_mb`` (the refit's budget, planned from the
    file's metadata: components/refit.py) is not searched; its record says why in one sentence.

    The study is kept in the store as data (``studies/<model>/<task key>.json``, rewritten after
    every trial): a re-run of the same task resumes it. The item's ``champion`` ('' for none)
    warm-starts the study from the champion version's recorded trials. The schema comes from the training set's
    metadata: kfp.local (2.17) replaces every upstream task output passed into a ParallelFor body
    with the loop item.
    """
    import json

    from components import refit, runtime, tune
    from components import train as stage
    from components.data import Schema
    from components.status import cache_key
    from components.store import open_store

    s = runtime.settings(store, model)
    schema = Schema.from_json(train.metadata["schema"])
    inputs = dict(train=train.uri, family=family, folds=folds, seed=seed, max_rows=max_rows, memory_mb=memory_mb)
    key = cache_key(**inputs)
    st = open_store(s.store, s)

    def search() -> list:
        refused = refit.refused_families(train.path, schema, family["candidates"], list(family["spaces"]), memory_mb)
        rows = stage.read_sample(train.path, [*schema.feature_names, schema.target], max_rows, seed)
        metrics.log_metric("search_rows", len(rows))
        return tune.search(rows, schema, family, folds, seed, max_rows, history=tune.recorded(st, tune.study_key(model, key)),
                           warm=tune.champion_trials(st, model, family.get("champion", "")),
                           save=lambda records: tune.record(st, tune.study_key(model, key), records), refused=refused)

    results = runtime.cached_step(f"train-{key}", search, s, **inputs)
    scored = [r for r in results if r.get("state", "complete") == "complete"]
    if scored:  # a task whose every family was refused has no score: the refit step says why
        top = stage.best(scored)
        metrics.log_metric(top["metric"], top["score"])
        metrics.log_metric("cv_std", top["std"])
    for state, n in tune.counts(results).items():
        metrics.log_metric(f"trials_{state}", n)
    with open(metrics.path, "w") as f:  # KFP keeps metrics in metadata; the file lets caches verify the output
        json.dump(metrics.metadata, f)
    return json.dumps(results)


@component
def refit(train: Input[Dataset], holdout: Input[Dataset], schema: str, results: list, seed: int,
          store: str, model_name: str, train_workers: int, memory_mb: int,
          model: Output[Model], package: Output[Model], search: Output[Metrics], leaderboard: Output[Markdown]) -> str:
    """Pick the best trial, refit it on all training rows (within ``memory_mb``; an XGBoost one by
    ``train_workers`` workers: components/refit.py) and package it (pickle, reference sample, ONNX
    checked on the holdout, the search's trials) for register; returns the choice with how it was
    trained (JSON). For the KFP UI: ``search`` holds the best trial's score, the trial counts and
    the leaderboard's scores (``<rank> <trial id>``); ``leaderboard`` the trials, best first, with
    their parameters."""
    import dataclasses
    import json
    import uuid

    from components import refit as stage
    from components import runtime, tune
    from components import train as searched
    from components.data import Schema

    # a sampled trial whose own refit would not fit the budget is marked refused: the best that fits is refit
    sch = Schema.from_json(schema)
    trials = stage.within_budget(train.path, sch, searched.trials_of(results), memory_mb)
    s = runtime.settings(store, model_name, seed=seed, train_workers=train_workers, refit_memory_mb=memory_mb)
    job = f"flywheel-refit-{uuid.uuid4().hex[:10]}"  # a TrainJob name: RFC 1035, unique per attempt

    def fit() -> tuple:
        best = searched.best(trials)  # in the step: a search with nothing to choose (every family refused) fails it
        made, training = stage.refit_and_package(train.path, holdout.path, sch,
                                                 best["candidate"], s, job)
        return dataclasses.replace(made, trials=json.dumps(trials).encode()), training, best

    made, training, best = runtime.cached_step("refit", fit, s, train=train.uri, holdout=holdout.uri, results=results,
                                         train_workers=train_workers, memory_mb=memory_mb)
    with open(model.path, "wb") as f:
        f.write(made.model)
    made.save(package.path)
    model.metadata.update({"family": best["candidate"]["family"], "cv_score": best["score"], **training})
    package.metadata.update({"onnx": bool(made.onnx_report.get("passed"))})
    search.log_metric(f"best {best['metric']}", best["score"])
    for state, n in tune.counts(trials).items():
        search.log_metric(f"trials {state}", n)
    for rank, row in enumerate(tune.leaderboard(trials, top=tune.LEADERBOARD_ROWS), start=1):
        if row["score"] is not None:
            search.log_metric(f"{rank:02d} {row['id']} ({row['state']})", row["score"])
    with open(search.path, "w") as f:  # metadata-only artifact: a file lets caches verify it
        json.dump(search.metadata, f)
    with open(leaderboard.path, "w") as f:
        f.write(tune.leaderboard_markdown(trials))
    return json.dumps({**best, "training": training})


@component
def evaluate(model: Input[Model], holdout: Input[Dataset], schema: str, store: str, model_name: str, champion: str,
             metrics: Output[Metrics], confusion: Output[ClassificationMetrics], report: Output[HTML]) -> str:
    """Score challenger and champion on the same holdout; returns the evaluation (JSON)."""
    import json

    import joblib
    import pandas as pd

    from components import evaluate as stage
    from components import runtime
    from components.data import Schema
    from components.registry import Registry
    from components.store import open_store

    s = runtime.settings(store, model_name)
    sch = Schema.from_json(schema)

    def compare():
        reg = Registry(open_store(s.store, s), s.model)
        champ = stage.load_champion(reg.load_model, champion) if champion else None
        return stage.evaluate(joblib.load(model.path), champ, pd.read_parquet(holdout.path), sch, champion or None)

    result = runtime.cached_step("evaluate", compare, s, model=model.uri, holdout=holdout.uri, champion=champion)
    for k, v in result["challenger"].items():
        if isinstance(v, float):
            metrics.log_metric(k, v)
    cm = result["challenger"].get("confusion_matrix")
    if cm:
        confusion.log_confusion_matrix(cm["labels"], cm["matrix"])
    for artifact in (metrics, confusion):  # metadata-only artifacts: a file lets caches verify them
        with open(artifact.path, "w") as f:
            json.dump(artifact.metadata, f)
    with open(report.path, "w") as f:
        f.write(stage.report_html(result, f"{model_name}: challenger vs champion {champion or '(none)'}"))
    return json.dumps(result)


@component
def register(package: Input[Model], schema: str, evaluation: str, best: str, fingerprint: str, champion: str,
             store: str, model_name: str, run: str, promotion_margin: float, min_accuracy: float, min_r2: float,
             job: str = "") -> str:
    """Write the immutable version and apply the promotion gate; returns the promoted version or ''.

    The gate (margin and floors) is the run's parameters: the settings of whoever started the run.

    One plain output, because kfp.local conditions only resolve a task's single output.
    The decision and its reason are recorded in the registry. It writes the package refit
    made, byte for byte, and never unpickles the model (no scikit-learn in this step).
    """
    import json

    from components import register as stage
    from components import runtime
    from components.data import Schema
    from components.package import ModelPackage
    from components.registry import Registry
    from components.store import open_store

    s = runtime.settings(store, model_name, promotion_margin=promotion_margin, min_accuracy=min_accuracy, min_r2=min_r2)
    run = runtime.run_id(run, job)
    reg = Registry(open_store(s.store, s), s.model)
    decision = runtime.guarded(s, run, "register", lambda: stage.register(
        reg, ModelPackage.load(package.path), Schema.from_json(schema), json.loads(evaluation),
        json.loads(best), fingerprint, run, champion or None, s,
        dataset=runtime.recorded_dataset(s, run),
    ))
    return decision.version if decision.promoted else ""


@component
def deploy(version: str, store: str, model: str, run: str, job: str = "") -> str:
    """Roll the new champion out (embedded: the server follows the pointer); a failed rollout fails the step."""
    import json

    from components import deploy as stage
    from components import runtime

    s, run = runtime.settings(store, model), runtime.run_id(run, job)
    # checked(): a rollout that did not finish (and was restored) fails the step
    return json.dumps(runtime.guarded(s, run, "deploy", lambda: stage.deploy(s, version).checked().to_dict()))


@component
def record_run(status: dsl.PipelineTaskFinalStatus, store: str, model: str, run: str, job: str = "") -> str:
    """Exit handler: record how the run ended (and which step failed first, and why)."""
    import json

    from components import runtime
    from components import status as steps
    from components.registry import utcnow
    from components.store import open_store

    s, run = runtime.settings(store, model), runtime.run_id(run, job)
    st = open_store(s.store, s)
    failed = steps.first_failure(steps.read_all(st, model, run))
    error = {"step": failed.step, "error": failed.reason, "type": failed.error_type, "user_error": failed.user_error} if failed else None
    st.write(f"{runtime.run_key(model, run)}/status.json", json.dumps({
        "run": run, "state": status.state, "finished_at": utcnow(),
        "kfp_error": status.error_message or None, "error": error,
    }).encode())
    return status.state


@component
def batch_predict(data: str, output: str, version: str, store: str, model: str, run: str) -> str:
    """Score a whole file or prefix with the registered model and the serving validation."""
    import json

    from components import runtime
    from components.predict import predict_batch

    s = runtime.settings(store, model)
    result = runtime.guarded(s, run, "batch-predict", lambda: predict_batch(s, data, output, version or None))
    return json.dumps(result.to_dict())
