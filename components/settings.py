"""One typed settings object for the whole system, read at the edge and passed in.

Values come from (highest first) explicit arguments, ``FLYWHEEL_*`` environment variables,
the standard AWS variables for S3 (and ``MODEL_VERSION``, the serving pin the chart and the
deploy step write), and an optional YAML file named by ``FLYWHEEL_CONFIG``.

Every other process gets its settings one way: ``Settings.to_env()`` writes them as
environment variables (strings as they are, everything else as JSON: ``true``/``false``,
numbers) and the process reads them back with the same reader (``load_settings`` over its
environment, ``Settings.from_env`` over a given mapping). The embedded runner's kfp.local
tasks and the serving workers get ``to_env()`` as their environment; on a cluster the chart's
ConfigMap ``flywheel-config`` holds the same variables in the same format (tests hold it to that).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# The training tasks' memory limit (MB, decimal as Kubernetes reads "8000M"): the compiled
# pipeline sets it on the ingest, search and refit tasks, and the refit's budget defaults to it.
TRAINING_TASK_MEMORY_MB = 8000


class ConfigError(ValueError):
    """A setting the user gave is wrong; the message names it."""


class Settings(BaseSettings):
    """Everything Flywheel can be configured with."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="forbid", frozen=True, populate_by_name=True)

    store: str = Field(".flywheel/store", description="Store URI: a directory, file://… or s3://bucket/prefix.")
    model: str = Field("demo", description="Model name: the registry, predictions and monitoring key.")
    runner: Literal["local", "kfp"] = Field("local", description="Where pipelines run.")
    pipeline_root: str = Field(".flywheel/pipeline_root", description="KFP pipeline root (local dir for kfp.local).")
    pipeline_root_max_gib: float = Field(20.0, ge=0, description="Embedded runner: after each run, the oldest runs' "
                                         "artifacts in the pipeline root (and kfp.local's cache entries that point at "
                                         "them) are removed until it holds at most this many GiB; the newest run is "
                                         "always kept. 0: keep everything.")
    warm_tasks: bool = Field(True, description="Embedded runner: fork each kfp.local task from a task server that has "
                                               "kfp, pandas and scikit-learn imported (pipelines/local/task_server.py; relies on "
                                               "kfp.local and Python internals, checked at start-up); false: a new "
                                               "interpreter per task.")
    local_search_packing: bool = Field(True, description="Embedded runner: pack the search into as many tasks as "
                                       "kfp.local runs at once (2: a kfp.local internal, checked at start-up) and share "
                                       "the CPUs between them; false: one search task per model family.")
    run: str | None = Field(None, description="The pipeline run a step records its status under (set by the embedded "
                                              "runner for its kfp.local process; cached steps cannot take it as an input).")

    # S3 / MinIO: the standard AWS variables, never FLYWHEEL_-prefixed.
    s3_endpoint_url: str | None = Field(None, validation_alias=AliasChoices("AWS_ENDPOINT_URL", "FLYWHEEL_S3_ENDPOINT_URL"))
    s3_region: str | None = Field(None, validation_alias=AliasChoices("AWS_DEFAULT_REGION", "AWS_REGION"))
    s3_max_attempts: int = Field(5, ge=1, description="botocore standard-mode retry attempts.")
    s3_connect_timeout_seconds: float = Field(5.0, gt=0, description="Connect timeout of one S3 request.")
    s3_read_timeout_seconds: float = Field(30.0, gt=0, description="Read timeout of one S3 request.")

    # KFP cluster
    kfp_host: str | None = Field(None, description="KFP API host, e.g. http://ml-pipeline.kubeflow:8888.")
    kfp_experiment: str = "flywheel"
    kfp_pipeline: str = "flywheel-training"
    kfp_namespace: str | None = Field(None, description="Multi-user KFP: the profile namespace runs and experiments live in.")
    kfp_token_path: str = Field("/var/run/secrets/kubeflow/pipelines/token",
                                description="ServiceAccount token (audience pipelines.kubeflow.org) sent to KFP when the file exists.")
    component_image: str | None = Field(None, description="Image the compiled pipeline's steps run on: an immutable "
                                        "reference (digest, or the source-derived tag of `make images`).")

    # Training
    parallelism: int = Field(4, ge=1, description="Search tasks run at once (the pipeline's ParallelFor), compiled "
                                                   "into the pipeline; kfp.local runs at most 2 at once.")
    cv_folds: int = Field(3, ge=2)
    holdout_fraction: float = Field(0.2, gt=0, lt=0.9)
    promotion_margin: float = Field(0.0, ge=0, description="Challenger must beat the champion by this much.")
    min_accuracy: float = Field(0.6, ge=0, le=1, description="Absolute gate for classifiers (balanced accuracy).")
    min_r2: float = Field(0.1, le=1, description="Absolute gate for regressors (R2).")
    max_train_rows: int = Field(200_000, ge=1000, description="Rows used for the hyper-parameter search (sampled).")
    families: str | None = Field(None, description="Model families the search tries, comma-separated (logistic, linear, "
                          "random_forest, hist_gradient_boosting, xgboost, lightgbm); empty: every family of the task.")
    refit_memory_mb: int = Field(TRAINING_TASK_MEMORY_MB, ge=1, description=(
        "Memory (MB) the refit of the chosen model may use: an XGBoost or LightGBM model that would need more "
        "trains from Parquet batches (external memory, lightgbm.Sequence); any other family that would is refused "
        "before the search (listed as refused on the leaderboard). Default: the training task's memory limit."))
    seed: int = 42
    train_workers: int = Field(1, ge=1, le=256, description=(
        "Workers the refit of an XGBoost model is trained by (XGBoost's collective protocol, each worker reading "
        "its share of the training rows): embedded, local processes under XGBoost's tracker; on a cluster, the "
        "pods of a Kubeflow Trainer TrainJob. 1: the refit runs in its own step, as for every other family."))
    train_timeout_seconds: float = Field(3600, gt=0, description="How long the refit waits for its distributed "
                                         "workers (local processes or the TrainJob) before failing the step.")
    trainer_runtime: str = Field("xgboost-distributed", description="The Kubeflow Trainer runtime a distributed "
                                 "refit's TrainJob runs on, as Kind/name (a bare name: a ClusterTrainingRuntime, the "
                                 "Trainer's own xgboost-distributed by default; the chart's TrainingRuntime/flywheel-xgboost).")
    trainer_namespace: str = Field("kubeflow", description="Namespace the refit step creates its TrainJob in: where "
                                   "the pipeline's steps run (the chart's Role allows exactly that there).")
    trials: int | None = Field(None, ge=1, description="The search's budget in trials, shared among the model families "
                               "(components/tune.py); unset: each family's default points only (the fast first model).")
    time_budget_minutes: float | None = Field(None, gt=0, description="The search's budget in wall time: each search task "
                                              "starts no new trial after this many minutes; unset: no time limit.")
    search_space: str | None = Field(None, description="A YAML file of the hyper-parameter search space, replacing "
                                     "the project's components/search_space.yaml whole; unset: the project's.")

    # Monitoring
    window_minutes: int | None = Field(None, ge=1, description="Window length; default: since the last pass.")
    min_rows: int = Field(1000, ge=1)
    drift_share_threshold: float = Field(0.3, gt=0, le=1)
    quality_drop_threshold: float = Field(0.05, ge=0)
    cooldown_minutes: int = Field(60, ge=0)
    include_feedback: bool = Field(False, description=(
        "A monitor's retrain reads the dataset plus the labelled production rows (feedback joined to the "
        "logged features); without them and without --data, drift only raises an alarm."))
    retry_backoff_minutes: float = Field(5.0, ge=0, description="A failed retrain is retried after this, doubling per attempt.")
    retry_max_attempts: int = Field(4, ge=1, description="Attempts of one window's retrain before it is given up.")
    late_log_days: int = Field(7, ge=0, description="How far back a pass looks for prediction logs that arrived late.")
    log_compaction: bool = Field(True, description=(
        "After each pass the monitor folds the prediction and feedback log parts of every hour that ended "
        "10 minutes ago into one file per hour, so a pass reads objects per hour, not per flush."))
    log_compaction_grace_minutes: float = Field(60.0, ge=0, description=(
        "Parts a compaction covered are deleted this long after it: a pass or retrain that listed them before "
        "must finish reading within it."))
    sample_size: int = Field(50_000, ge=1000, description="Rows of the window handed to Evidently.")
    evidently_workspace: str = Field(".flywheel/evidently", description="Evidently UI workspace; empty: no snapshots.")
    monitor_reports: Literal["always", "drift", "never"] = Field(
        "always", description="When a pass renders report.html and the workspace snapshot, after its decision: "
                              "every evaluated window, only when a retrain is wanted, or never.")
    pushgateway: str | None = Field(None, description="Prometheus Pushgateway URL the monitor pushes its metrics to.")
    report_chi2_homogeneity: bool = Field(True, description="The drift report shows the decision's chi-square test of "
                                          "homogeneity for categorical columns (registered through Evidently's legacy "
                                          "stat-test registry, checked at start-up); false: Evidently's own chi-square.")

    # Serving
    spill_dir: str = Field(".flywheel/spill", description="Where log parts wait when the store does not take them.")
    spill_max_mb: float = Field(1024.0, gt=0, description="Size the spill directory may reach; keep it below its volume's limit.")
    spill_lease_seconds: float = Field(120.0, gt=0, description="How long a claim on a spilled part holds before another worker may send it.")
    log_flush_rows: int = Field(1000, ge=1, description="Buffered records that trigger a flush; a worker holds at most "
                                                        "2 x this many not yet written (what a SIGKILL can lose) before "
                                                        "requests wait.")
    log_append_wait_seconds: float = Field(2.0, ge=0, description="How long a request waits for room in a log that holds "
                                                                  "2 x log_flush_rows records not yet written before it is "
                                                                  "answered 503 with Retry-After.")
    log_flush_seconds: float = Field(2.0, gt=0, description="Longest time a record waits in memory before it is flushed.")
    log_write_timeout_seconds: float = Field(5.0, gt=0, description="Connect and read timeout of one log write to the store.")
    log_close_seconds: float = Field(15.0, gt=0, description="At shutdown, how long the logs keep sending to the store before leaving the rest spilled.")
    log_max_buffer_rows: int = Field(200_000, ge=1, description="Records kept in memory while neither the store nor the spill directory takes them.")
    serving_poll_seconds: float = Field(2.0, gt=0, description="How often the server checks the champion pointer.")
    serving_runtime: Literal["auto", "sklearn"] = Field("auto", description="auto: ONNX when its holdout check passed.")
    prediction_log: bool = Field(True, description="Log every prediction (off only for benchmarks).")
    serving_strict_fields: bool = Field(False, description="Refuse records carrying fields the model does not use "
                                                           "(default: ignore and count them).")
    serving_workers: int | None = Field(
        None, ge=1, description="Service worker processes; default: one per CPU of the container's limit (cgroup cpu.max).")
    serving_deadline_fix: bool = Field(True, description="The request deadline (traffic.timeout) with its timer "
                                       "cancelled when the answer starts (services/serving/deadline.py; replaces a BentoML "
                                       "internal, checked at start-up); false: BentoML's own timeout middleware.")
    serving_access_log: bool = Field(False, description="One access-log line per API request (BentoML's access log); "
                                     "off: requests are counted in /metrics and every scored record is in the prediction log.")
    serving_tracing: bool = Field(False, description="Trace the API routes with BentoML's OpenTelemetry middleware (configure "
                                  "an exporter in BentoML's tracing options); off: the routes skip it.")
    serving_deployment: str = "flywheel-serving"
    serving_namespace: str = "flywheel"
    deploy_timeout_seconds: float = Field(300, gt=0, description="The deploy step's deadline for a rollout to finish.")
    # The name the chart and the deploy step write on the serving container (never FLYWHEEL_-prefixed).
    serving_model_version: str = Field(
        "champion", validation_alias="MODEL_VERSION",
        description="The version the server serves: 'champion' follows the registry's champion pointer, a version pins it.")

    def to_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """These settings as the environment variables that rebuild them in another process.

        One format for every runtime: strings as they are, everything else as JSON (``true``,
        ``0.6``); an unset (None) setting has no variable. With ``base`` (a parent's environment):
        ``base`` without any settings variable (nor ``FLYWHEEL_CONFIG``), plus these, so the
        child process sees exactly these settings.
        """
        env = {k: v for k, v in (base or {}).items() if k not in _VARIABLES}
        for name, value in self.model_dump(mode="json").items():
            if value is not None:
                env[env_name(name)] = value if isinstance(value, str) else json.dumps(value)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """The settings a process whose environment is exactly ``env`` has (``FLYWHEEL_CONFIG`` included).

        Raises ConfigError naming the bad setting.
        """
        with _reading(env):
            return _checked(cls)

    @model_validator(mode="after")
    def _lease_outlives_a_write(self) -> Settings:
        # a claim that expires while its owner is still writing lets a second worker send the part too
        if self.spill_lease_seconds <= 2 * self.log_write_timeout_seconds:
            raise ValueError(f"spill_lease_seconds ({self.spill_lease_seconds}) must be longer than one log write "
                             f"(2 x log_write_timeout_seconds = {2 * self.log_write_timeout_seconds})")
        return self

    @field_validator("families")
    @classmethod
    def _known_families(cls, v: str | None) -> str | None:
        from components.train import chosen_families

        return ",".join(chosen_families(v)) or None if v is not None else None

    @field_validator("trials", "time_budget_minutes", mode="before")
    @classmethod
    def _budget_buys_a_model(cls, v: Any) -> Any:
        # before the bounds: a zero budget gets the sentence that says what to do instead
        try:
            zero = v is not None and float(v) <= 0
        except (TypeError, ValueError):
            return v  # not a number: the type check names it
        if zero:
            raise ValueError(f"a search budget of {v} trains no model: unset it for the default search or give more than 0")
        return v

    @field_validator("store")
    @classmethod
    def _store_scheme(cls, v: str) -> str:
        if "://" in v and not v.startswith(("file://", "s3://")):
            raise ValueError(f"store URI {v!r} must be a directory, file://… or s3://bucket/prefix")
        if v.startswith("s3://") and not v[len("s3://"):].split("/")[0]:
            raise ValueError(f"store URI {v!r} has no bucket name")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvSource(settings_cls), _YamlSource(settings_cls))


def env_names(field: str) -> tuple[str, ...]:
    """The environment variables a setting is read from (the first one present wins; ``to_env`` writes the first)."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (alias,) if isinstance(alias, str) else (f"FLYWHEEL_{field.upper()}",)


def env_name(field: str) -> str:
    """The environment variable that carries a setting to another process."""
    return env_names(field)[0]


CONFIG_VARIABLE = "FLYWHEEL_CONFIG"
# The compute-thread caps (OpenMP, OpenBLAS, MKL) a child process is given: the embedded runner's
# tasks (pipelines/local/runner.py) and the service's workers (services/serving/launch.py). Not settings:
# the libraries read them themselves when they start.
MODEL_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_VARIABLES = frozenset({CONFIG_VARIABLE, *(name for field in Settings.model_fields for name in env_names(field))})
# The environment the settings sources read: os.environ, or the mapping Settings.from_env was given.
_ENV: ContextVar[Mapping[str, str] | None] = ContextVar("flywheel_settings_env", default=None)


@contextmanager
def _reading(env: Mapping[str, str]) -> Iterator[None]:
    token = _ENV.set(env)
    try:
        yield
    finally:
        _ENV.reset(token)


def _environment() -> Mapping[str, str]:
    env = _ENV.get()
    return os.environ if env is None else env


def process_environment() -> Mapping[str, str]:
    """This process's environment: the base a child process's ``to_env(base)`` starts from."""
    return _environment()


# The variables Kubeflow Trainer's XGBoost runtime injects into every node (and run_local into every worker).
DMLC_VARIABLES = ("DMLC_TRACKER_URI", "DMLC_TRACKER_PORT", "DMLC_TASK_ID", "DMLC_NUM_WORKER")


def collective_env() -> tuple[int, int, dict[str, Any]]:
    """This worker's rank, the number of workers, and the ``xgboost.collective.CommunicatorContext`` arguments, from the ``DMLC_*`` variables.

    Raises ConfigError naming the variable that is missing or not a number.
    """
    env = _environment()
    missing = [name for name in DMLC_VARIABLES if not env.get(name)]
    if missing:
        raise ConfigError(f"{missing[0]} is not set: a distributed training worker is started by its runtime, "
                          f"which sets {', '.join(DMLC_VARIABLES)}")
    values: dict[str, int] = {}
    for name in DMLC_VARIABLES[1:]:
        try:
            values[name] = int(env[name])
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, not {env[name]!r}") from None
    rank, workers = values["DMLC_TASK_ID"], values["DMLC_NUM_WORKER"]
    if not 0 <= rank < workers:
        raise ConfigError(f"DMLC_TASK_ID {rank} is not a rank of DMLC_NUM_WORKER {workers} workers")
    return rank, workers, {"dmlc_tracker_uri": env["DMLC_TRACKER_URI"], "dmlc_tracker_port": values["DMLC_TRACKER_PORT"],
                           "dmlc_task_id": str(rank)}


def _variable(field: str, env: Mapping[str, str]) -> str | None:
    """The first of a setting's variables that ``env`` holds (None: none)."""
    return next((name for name in env_names(field) if name in env), None)


def _env_values(env: Mapping[str, str]) -> dict[str, str]:
    """Each setting's raw text, from the first of its variables that is present."""
    return {field: env[name] for field in Settings.model_fields if (name := _variable(field, env)) is not None}


class _EnvSource(PydanticBaseSettingsSource):
    """Settings from the environment variables ``to_env`` writes (case-sensitive, as Kubernetes is)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _env_values(_environment())


def _yaml_file(env: Mapping[str, str]) -> tuple[str | None, dict[str, Any]]:
    """The YAML file FLYWHEEL_CONFIG names and its settings (keys are field names)."""
    path = env.get(CONFIG_VARIABLE)
    if not path:
        return None, {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{CONFIG_VARIABLE} points to {path}, which is not a file")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of setting names to values")
    return path, data


class _YamlSource(PydanticBaseSettingsSource):
    """Settings from the YAML file named by FLYWHEEL_CONFIG."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _yaml_file(_environment())[1]


def _checked(cls: type[Settings], **overrides: Any) -> Settings:
    try:
        return cls(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        raise ConfigError(f"setting {field!r}: {err['msg']}") from None


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment, the YAML file and explicit overrides.

    Raises ConfigError naming the bad setting.
    """
    return _checked(Settings, **{k: v for k, v in overrides.items() if v is not None})


def setting_sources(**overrides: Any) -> dict[str, str]:
    """Where ``load_settings(**overrides)`` takes each setting from: ``argument``, ``$VARIABLE``,
    the YAML file's path, or ``default``."""
    env = _environment()
    path, data = _yaml_file(env)
    sources = {}
    for field in Settings.model_fields:
        name = _variable(field, env)
        if overrides.get(field) is not None:
            sources[field] = "argument"
        elif name is not None:
            sources[field] = f"${name}"
        elif field in data:
            sources[field] = str(path)
        else:
            sources[field] = "default"
    return sources


def settings_schema() -> dict[str, Any]:
    """The settings' JSON schema (field names as keys), each property naming its variable as ``x-env``."""
    schema = Settings.model_json_schema(by_alias=False)
    for field, prop in schema["properties"].items():
        prop["x-env"] = env_name(field)
    return schema
