"""The training pipeline: one DAG from raw data to a promoted, deployed champion.

    fingerprint ─► champion ─┐ (and the search's warm start)
                 ▼           ▼
               ingest ─► validate ─► features ─► search-space ─► train × family (ParallelFor) ─► refit
                                                                             ▼
                                            deploy ◄─ [promoted] ◄─ register ◄─ evaluate
    (record_run: exit handler, always runs)

``build()`` is the embedded default; ``build(ClusterOptions(...))`` gives the same DAG with
the Kubernetes settings (kfp-kubernetes) a cluster run needs. The search's
parallelism is the ``parallelism`` setting, compiled in (``dsl.ParallelFor`` takes a number).
"""

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from kfp import dsl
from kfp import kubernetes as k8s

from components import kfp_components as c
from components.settings import TRAINING_TASK_MEMORY_MB, Settings
from pipelines.settings_routes import CONFIG_MAP, configmap_variables

IO_RETRIES = 3
TASK_MEMORY = f"{TRAINING_TASK_MEMORY_MB}M"  # the training tasks' limit; the refit's budget defaults to it
# The pipeline parameters' defaults are the settings' (pipeline_arguments always passes them).
DEFAULT = Settings.model_construct()


@dataclass(frozen=True)
class ClusterOptions:
    """What a cluster run needs beyond the DAG: credentials, placement, the S3 endpoint."""

    s3_secret: str = "flywheel-s3"
    s3_endpoint_url: str | None = None
    config_map: str = CONFIG_MAP
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, str], ...] = ()
    run_as_user: int = 10001


def apply_cluster(task: dsl.PipelineTask, cluster: ClusterOptions | None) -> dsl.PipelineTask:
    """S3 credentials from the Secret, every setting from the ConfigMap, placement, non-root.

    The one place a task gets its cluster settings: the training and the batch-scoring pipeline both use it.
    Each variable of the ConfigMap (pipelines/settings_routes.py) is mapped into the task; one the
    ConfigMap leaves out (an unset setting) stays unset. An ``s3_endpoint_url`` given here wins
    over the ConfigMap's (it is the endpoint as the step pods reach it).
    """
    if cluster is None:
        return task
    k8s.use_secret_as_env(task, cluster.s3_secret, {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                                    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
    variables = [v for v in configmap_variables() if not (cluster.s3_endpoint_url and v == "AWS_ENDPOINT_URL")]
    k8s.use_config_map_as_env(task, cluster.config_map, {v: v for v in variables}, optional=True)
    if cluster.s3_endpoint_url:
        task.set_env_variable("AWS_ENDPOINT_URL", cluster.s3_endpoint_url)
    for key, value in cluster.node_selector.items():
        k8s.add_node_selector(task, key, value)
    for tol in cluster.tolerations:
        k8s.add_toleration(task, key=tol.get("key"), operator=tol.get("operator", "Equal"), value=tol.get("value"),
                           effect=tol.get("effect"))
    k8s.set_security_context(task, run_as_user=cluster.run_as_user, run_as_non_root=True)
    return task


def build(cluster: ClusterOptions | None = None, parallelism: int = DEFAULT.parallelism, image: str = c.COMPONENT_IMAGE,
          pipeline_root: str | None = None):
    """The pipeline: every task on ``image``, with the cluster's Kubernetes settings when given;
    ``parallelism`` search tasks run at once (the ``parallelism`` setting); ``pipeline_root`` its default artifact root."""

    def on(task: dsl.PipelineTask) -> dsl.PipelineTask:
        return apply_cluster(task.set_container_image(image), cluster)

    @dsl.pipeline(name="flywheel-training", description="Ingest, validate, train (fan-out), evaluate, register, deploy.",
                  pipeline_root=pipeline_root)
    def training_pipeline(
        source: str,
        target: str,
        run: str,
        store: str,
        model: str = "demo",
        task: str = "",
        timestamp: str = "",
        id_columns: list = [],  # KFP pipeline defaults are literals
        exclude: list = [],
        additions: list = [],  # a retrain's parts of labelled production rows (store keys)
        holdout_fraction: float = DEFAULT.holdout_fraction,
        cv_folds: int = DEFAULT.cv_folds,
        seed: int = DEFAULT.seed,
        max_train_rows: int = DEFAULT.max_train_rows,
        families: str = "",  # the families setting (empty: every family of the task)
        refit_memory_mb: int = DEFAULT.refit_memory_mb,
        promotion_margin: float = DEFAULT.promotion_margin,
        min_accuracy: float = DEFAULT.min_accuracy,
        min_r2: float = DEFAULT.min_r2,
        train_workers: int = DEFAULT.train_workers,
        search_tasks: int = 0,  # 0: one search task per model family; n: packed into n (the embedded runner's 2)
        trials: int = 0,  # the search budget in trials; 0: each family's default points (the trials setting unset)
        time_budget_minutes: float = 0.0,  # minutes per search task; 0: no limit
        search_space: dict = {},  # the search space file's content; empty: the project's
    ) -> None:
        data = dict(source=source, target=target, task=task, timestamp=timestamp, id_columns=id_columns, exclude=exclude,
                    additions=additions)
        job = dsl.PIPELINE_JOB_ID_PLACEHOLDER  # a schedule's run name holds it: each run records under its own id
        recorder = on(c.record_run(store=store, model=model, run=run, job=job).set_caching_options(False))
        with dsl.ExitHandler(recorder, name="run"):
            # never cached: they look at the world as it is now
            fp = on(c.fingerprint(**data, store=store, model=model, run=run, job=job).set_caching_options(False))
            fp.set_retry(num_retries=IO_RETRIES, backoff_duration="5s")
            champ = on(c.champion(store=store, model=model, run=run, fingerprint=fp.outputs["digest"], job=job).set_caching_options(False))
            champ.set_retry(num_retries=IO_RETRIES, backoff_duration="5s")

            # cached: every key includes the data fingerprint (and the champion where it matters)
            ingested = on(c.ingest(**data, store=store, model=model, fingerprint=fp.outputs["digest"],
                                   located=fp.outputs["located"]))
            ingested.set_retry(num_retries=IO_RETRIES, backoff_duration="5s")
            ingested.set_cpu_request("1").set_memory_request("2G").set_memory_limit(TASK_MEMORY)
            schema = ingested.outputs["schema"]

            checked = on(c.validate(dataset=ingested.outputs["dataset"], schema=schema, store=store, model=model,
                                    champion=champ.outputs["version"]))
            split = on(c.features(dataset=ingested.outputs["dataset"], schema=schema,
                                  holdout_fraction=holdout_fraction, seed=seed).after(checked))
            space = on(c.search_space(schema=schema, tasks=search_tasks, space=search_space, trials=trials,
                                      minutes=time_budget_minutes, champion=champ.outputs["warm_start"], families=families))
            with dsl.ParallelFor(space.output, parallelism=parallelism, name="search") as family:
                # one study per family, rounds inside the task: components/tune.py says why
                trial = on(c.train(train=split.outputs["train"], family=family, folds=cv_folds, seed=seed,
                                   max_rows=max_train_rows, store=store, model=model, memory_mb=refit_memory_mb))
                trial.set_cpu_request("1").set_memory_request("2G").set_cpu_limit("2").set_memory_limit(TASK_MEMORY)
            best = on(c.refit(train=split.outputs["train"], holdout=split.outputs["holdout"], schema=schema,
                              results=dsl.Collected(trial.outputs["Output"]), seed=seed, store=store, model_name=model,
                              train_workers=train_workers, memory_mb=refit_memory_mb))
            best.set_cpu_request("1").set_memory_request("2G").set_memory_limit(TASK_MEMORY)

            evaluation = on(c.evaluate(model=best.outputs["model"], holdout=split.outputs["holdout"], schema=schema,
                                       store=store, model_name=model, champion=champ.outputs["version"]))
            registered = on(c.register(
                package=best.outputs["package"], schema=schema, evaluation=evaluation.outputs["Output"],
                best=best.outputs["Output"],
                fingerprint=fp.outputs["digest"], champion=champ.outputs["version"], store=store, model_name=model, run=run,
                promotion_margin=promotion_margin, min_accuracy=min_accuracy, min_r2=min_r2, job=job,
            ))
            # never cached: it writes the registry (and is idempotent for the same data and model)
            registered.set_caching_options(False).set_retry(num_retries=IO_RETRIES, backoff_duration="5s")
            with dsl.If(registered.output != "", name="promoted"):
                rollout = on(c.deploy(version=registered.output, store=store, model=model, run=run, job=job))
                # one retry (a transient API error); a rollout that failed and was rolled back fails the run
                rollout.set_caching_options(False).set_retry(num_retries=1, backoff_duration="10s")

    return training_pipeline


def compiled_parallelism(package: str | Path) -> int | None:
    """The search parallelism a compiled package runs with (None: it has no search loop)."""
    ir = next(yaml.safe_load_all(Path(package).read_text())) or {}
    dags = [ir.get("root", {}), *ir.get("components", {}).values()]
    limits = [task["iteratorPolicy"].get("parallelismLimit", 0) for dag in dags
              for task in dag.get("dag", {}).get("tasks", {}).values() if "iteratorPolicy" in task]
    return limits[0] if limits else None
