"""How each setting reaches a cluster run, in one table: the chart, the compiled pipeline and
``flywheel settings`` follow it, and tests/integration/test_settings_route.py holds the chart to it.

On one machine every process gets every setting one way: ``Settings.to_env()`` is its
environment (the kfp.local tasks through the runner's child process, the serving workers
through ``bentoml serve``). On a cluster, processes start from manifests, so each setting has
one route:

* ``configmap``: ConfigMap ``flywheel-config``, rendered by the chart from the value ``chart``
  (or as ``note`` says) in ``to_env``'s format. The serving and monitor pods read all of it
  (``envFrom``), and the compiled pipeline maps each of these variables into every step pod.
* ``serving``: the serving container's own environment, from the chart value ``chart``.
* ``fixed``: the image or the chart fixes it (``note`` says how); there is nothing to set.
* ``embedded``: the embedded runner's alone; compiling for a cluster refuses it when it is set.

Two rules more for a pipeline run. The settings in ``RUN_PARAMETERS`` are the run's parameters,
taken from the settings of whoever starts the run (the CLI here; the monitor in the cluster,
whose settings are the ConfigMap's): the training settings KFP's cache must key on, and the
promotion gate, so the floor a user set guards the run they started. ``parallelism`` is
compiled into the pipeline (``dsl.ParallelFor`` takes a number, not a parameter) from the
compiling side's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from components.settings import ConfigError, Settings, env_name

Where = Literal["configmap", "serving", "fixed", "embedded"]
CONFIG_MAP = "flywheel-config"


@dataclass(frozen=True)
class Route:
    """How one setting reaches the cluster's processes."""

    where: Where
    chart: str | None = None  # the chart value (a values.yaml path) it is rendered from
    note: str = ""  # how the chart renders it when no value holds it, or why it cannot be set


def _cm(chart: str | None = None, note: str = "") -> Route:
    return Route("configmap", chart, note)


ROUTES: dict[str, Route] = {
    "store": _cm("config.store"),
    "model": _cm("config.model"),
    "runner": _cm("config.runner"),
    "pipeline_root": _cm("config.kfp.pipelineRoot", "empty: <store>/pipeline_root"),
    "pipeline_root_max_gib": Route("embedded", note="a cluster's pipeline root is in the store, where KFP's backend "
                                   "reuses cached artifacts without checking them: expire it with the bucket's lifecycle "
                                   "rule together with KFP's cache"),
    "warm_tasks": Route("embedded", note="it chooses how kfp.local starts its task processes"),
    "run": Route("embedded", note="the embedded runner names the run for its kfp.local process"),
    "local_search_packing": Route("embedded", note="it chooses how kfp.local packs the search into the tasks it runs at once"),
    "s3_endpoint_url": _cm("config.s3.endpointUrl", "empty: AWS S3"),
    "s3_region": _cm("config.s3.region"),
    "s3_max_attempts": _cm("config.s3.maxAttempts"),
    "s3_connect_timeout_seconds": _cm("config.s3.connectTimeoutSeconds"),
    "s3_read_timeout_seconds": _cm("config.s3.readTimeoutSeconds"),
    "kfp_host": _cm("config.kfp.host"),
    "kfp_experiment": _cm("config.kfp.experiment"),
    "kfp_pipeline": _cm("config.kfp.pipeline"),
    "kfp_namespace": _cm("config.kfp.namespace", "rendered when config.kfp.mode is multi-user"),
    "kfp_token_path": Route("fixed", note="the chart mounts the projected KFP token at the default path"),
    "component_image": Route("fixed", note="the component and monitor images carry their own reference"),
    "parallelism": _cm("config.training.parallelism"),
    "cv_folds": _cm("config.training.cvFolds"),
    "holdout_fraction": _cm("config.training.holdoutFraction"),
    "promotion_margin": _cm("config.training.promotionMargin"),
    "min_accuracy": _cm("config.training.minAccuracy"),
    "min_r2": _cm("config.training.minR2"),
    "max_train_rows": _cm("config.training.maxTrainRows"),
    "families": _cm("config.training.families"),
    "refit_memory_mb": _cm("config.training.refitMemoryMB"),
    "seed": _cm("config.training.seed"),
    "train_workers": _cm("config.training.workers"),
    "train_timeout_seconds": _cm("config.training.timeoutSeconds"),
    "trainer_runtime": _cm("config.training.trainerRuntime"),
    "trainer_namespace": _cm(note="config.kfp.namespace: where the steps run and the chart's Role allows TrainJobs"),
    "trials": _cm("config.training.trials", "null: each family's default points only"),
    "time_budget_minutes": _cm("config.training.timeBudgetMinutes", "null: no time limit"),
    "search_space": _cm("config.training.searchSpace", "a YAML file in the monitor's pod; empty: the project's space"),
    "window_minutes": _cm("config.monitoring.windowMinutes"),
    "min_rows": _cm("config.monitoring.minRows"),
    "drift_share_threshold": _cm("config.monitoring.driftShareThreshold"),
    "quality_drop_threshold": _cm("config.monitoring.qualityDropThreshold"),
    "cooldown_minutes": _cm("config.monitoring.cooldownMinutes"),
    "include_feedback": _cm("config.monitoring.includeFeedback"),
    "retry_backoff_minutes": _cm("config.monitoring.retryBackoffMinutes"),
    "retry_max_attempts": _cm("config.monitoring.retryMaxAttempts"),
    "late_log_days": _cm("config.monitoring.lateLogDays"),
    "log_compaction": _cm("config.monitoring.logCompaction"),
    "log_compaction_grace_minutes": _cm("config.monitoring.logCompactionGraceMinutes"),
    "sample_size": _cm("config.monitoring.sampleSize"),
    "evidently_workspace": _cm(note="the workspace volume's path with evidentlyUI.enabled, else empty"),
    "monitor_reports": _cm("config.monitoring.reports"),
    "report_chi2_homogeneity": _cm("config.monitoring.chi2Homogeneity"),
    "pushgateway": _cm("config.monitoring.pushgateway", "empty: the chart's own with pushgateway.enabled"),
    "spill_dir": Route("serving", note="the spill volume's mount path"),
    "spill_max_mb": Route("serving", "serving.predictionLog.spillMaxMB"),
    "spill_lease_seconds": Route("serving", "serving.predictionLog.spillLeaseSeconds"),
    "log_flush_rows": Route("serving", "serving.predictionLog.flushRows"),
    "log_flush_seconds": Route("serving", "serving.predictionLog.flushSeconds"),
    "log_write_timeout_seconds": Route("serving", "serving.predictionLog.writeTimeoutSeconds"),
    "log_close_seconds": Route("serving", "serving.predictionLog.closeSeconds"),
    "log_max_buffer_rows": Route("serving", "serving.predictionLog.maxBufferRows"),
    "log_append_wait_seconds": Route("serving", "serving.predictionLog.appendWaitSeconds"),
    "serving_poll_seconds": _cm("config.serving.pollSeconds"),
    "serving_runtime": _cm("config.serving.runtime"),
    "prediction_log": _cm("config.serving.logPredictions"),
    "serving_strict_fields": _cm("config.serving.strictFields"),
    "serving_deadline_fix": _cm("config.serving.deadlineFix"),
    "serving_workers": _cm("config.serving.workers"),
    "serving_access_log": _cm("config.serving.accessLog"),
    "serving_tracing": _cm("config.serving.tracing"),
    "serving_deployment": _cm(note="flywheel-serving, the chart's fixed name"),
    "serving_namespace": _cm(note="the release namespace"),
    "deploy_timeout_seconds": _cm("config.serving.deployTimeoutSeconds"),
    "serving_model_version": Route("serving", "serving.modelVersion",
                                   "the pod's flywheel.io/model-version annotation: the deploy step sets it, the value pins it"),
}

# Settings a pipeline run takes as parameters (pipelines/local/runner.py: pipeline_arguments).
RUN_PARAMETERS = ("holdout_fraction", "cv_folds", "seed", "max_train_rows", "families", "refit_memory_mb",
                  "promotion_margin", "min_accuracy", "min_r2", "train_workers", "trials", "time_budget_minutes",
                  "search_space")
# Settings compiled into the pipeline package.
COMPILED = ("parallelism",)
# Settings the steps act on that only the ConfigMap gives them: a value set where a cluster
# run is started does not reach its steps.
STEP_SETTINGS_FROM_CONFIG_MAP = ("s3_region", "s3_max_attempts", "s3_connect_timeout_seconds", "s3_read_timeout_seconds",
                                 "serving_deployment", "serving_namespace", "deploy_timeout_seconds",
                                 "train_timeout_seconds", "trainer_runtime", "trainer_namespace")


def configmap_variables() -> tuple[str, ...]:
    """The variables of ConfigMap flywheel-config: what the compiled pipeline maps into every step."""
    return tuple(env_name(field) for field, route in ROUTES.items() if route.where == "configmap")


def describe(field: str) -> str:
    """How a setting reaches a cluster run, in a few words (``flywheel settings``)."""
    route = ROUTES[field]
    source = "; ".join(x for x in (f"chart {route.chart}" if route.chart else "", route.note) if x)
    if route.where == "configmap":
        text = f"ConfigMap {CONFIG_MAP} ({source})"
    elif route.where == "serving":
        text = f"serving container ({source})"
    elif route.where == "fixed":
        text = f"fixed: {route.note}"
    else:
        text = f"embedded runner only: {route.note}"
    if field in RUN_PARAMETERS:
        text += "; a run parameter, from whoever starts the run"
    if field in COMPILED:
        text += "; compiled into the pipeline, from whoever compiles it"
    return text


def check_cluster_compile(settings: Settings) -> None:
    """Refuse, in one sentence, a setting given a value a cluster run cannot apply (an embedded-runner one)."""
    for field, route in ROUTES.items():
        default = Settings.model_fields[field].default
        if route.where == "embedded" and field in settings.model_fields_set and getattr(settings, field) != default:
            raise ConfigError(f"setting {field!r} is {getattr(settings, field)!r} ({env_name(field)}), which a cluster "
                              f"run cannot apply because {route.note}: unset it to compile for a cluster")


def not_reaching_the_steps(settings: Settings) -> list[str]:
    """The settings given a value here that a cluster run's steps take from ConfigMap flywheel-config instead."""
    return [f for f in STEP_SETTINGS_FROM_CONFIG_MAP
            if f in settings.model_fields_set and getattr(settings, f) != Settings.model_fields[f].default]
