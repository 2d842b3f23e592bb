"""The training pipeline: one DAG from raw data to a promoted, deployed champion.

    fingerprint ─┐          champion ─┐
                 ▼                    ▼
               ingest ─► validate ─► features ─► train × N (ParallelFor) ─► refit
                                                                             ▼
                                            deploy ◄─ [promoted] ◄─ register ◄─ evaluate
    (record_run: exit handler, always runs)
"""


from kfp import dsl

from components import kfp_components as c

IO_RETRIES = 3
# Candidates scored at once on a cluster (kfp.local runs tasks one after another).
SEARCH_PARALLELISM = 4


@dsl.pipeline(name="flywheel-training", description="Ingest, validate, train (fan-out), evaluate, register, deploy.")
def training_pipeline(
    source: str,
    target: str,
    run: str,
    store: str,
    model: str = "demo",
    task: str = "",
    timestamp: str = "",
    id_columns: list = [],  # noqa: B006 - KFP pipeline defaults are literals
    exclude: list = [],  # noqa: B006
    holdout_fraction: float = 0.2,
    cv_folds: int = 3,
    seed: int = 42,
    max_train_rows: int = 200000,
    promotion_margin: float = 0.0,
) -> None:
    data = dict(source=source, target=target, task=task, timestamp=timestamp, id_columns=id_columns, exclude=exclude)
    recorder = c.record_run(store=store, model=model, run=run).set_caching_options(False)
    with dsl.ExitHandler(recorder, name="run"):
        fp = c.fingerprint(**data, store=store, model=model, run=run).set_caching_options(False)
        fp.set_retry(num_retries=IO_RETRIES, backoff_duration="5s")
        champ = c.champion(store=store, model=model, run=run).set_caching_options(False)
        champ.set_retry(num_retries=IO_RETRIES, backoff_duration="5s")

        ingested = c.ingest(**data, store=store, model=model, run=run, fingerprint=fp.output)
        ingested.set_retry(num_retries=IO_RETRIES, backoff_duration="5s").set_memory_request("2G").set_cpu_request("1")
        schema = ingested.outputs["schema"]

        checked = c.validate(dataset=ingested.outputs["dataset"], schema=schema, store=store, model=model, run=run,
                             champion=champ.output)
        split = c.features(dataset=ingested.outputs["dataset"], schema=schema, holdout_fraction=holdout_fraction,
                           seed=seed).after(checked)

        space = c.search_space(schema=schema)
        with dsl.ParallelFor(space.output, parallelism=SEARCH_PARALLELISM, name="search") as candidate:
            trial = c.train(train=split.outputs["train"], candidate=candidate, folds=cv_folds,
                            seed=seed, max_rows=max_train_rows)
            trial.set_cpu_request("1").set_memory_request("2G").set_cpu_limit("2").set_memory_limit("6G")
        best = c.refit(train=split.outputs["train"], schema=schema, results=dsl.Collected(trial.outputs["Output"]), seed=seed)
        best.set_cpu_request("1").set_memory_request("2G").set_memory_limit("6G")

        evaluation = c.evaluate(model=best.outputs["model"], holdout=split.outputs["holdout"], schema=schema,
                                store=store, model_name=model, champion=champ.output)
        registered = c.register(model=best.outputs["model"], train=split.outputs["train"],
                                holdout=split.outputs["holdout"], schema=schema, evaluation=evaluation.outputs["Output"],
                                best=best.outputs["Output"], fingerprint=fp.output, champion=champ.output, store=store,
                                model_name=model, run=run, promotion_margin=promotion_margin)
        registered.set_retry(num_retries=IO_RETRIES, backoff_duration="5s")
        with dsl.If(registered.output != "", name="promoted"):
            c.deploy(version=registered.output, store=store, model=model, run=run) \
                .set_caching_options(False).set_retry(num_retries=IO_RETRIES, backoff_duration="10s")
