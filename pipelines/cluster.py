"""The cluster path of the training pipeline: `flywheel submit` and `flywheel schedule`.

Both compile the pipeline with the cluster's Kubernetes settings (S3 credentials from the
Secret, the in-cluster S3 endpoint, artifacts under ``<store>/pipeline_root``), upload it as
a pipeline version named after its content hash (an unchanged package is never uploaded
twice), and start a run or create a recurring run in the named experiment.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

from components.data import DatasetSpec
from components.settings import ConfigError, Settings
from pipelines import image_tag, kfp_client
from pipelines.compile import compile_pipeline
from pipelines.local.runner import new_run_name, pipeline_arguments
from pipelines.settings_routes import check_cluster_compile
from pipelines.training import ClusterOptions

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"}
_CRON_FIELD = re.compile(r"^[\d*/,\-?LW#A-Za-z]+$")


def _check(settings: Settings) -> None:
    if not settings.store.startswith("s3://"):
        raise ConfigError(f"setting 'store' is {settings.store!r}: pods on a cluster cannot read a local directory; "
                          "use an s3://bucket/prefix store (FLYWHEEL_STORE or --store)")
    if not settings.kfp_host:
        raise ConfigError("setting 'kfp_host' is empty: pass --host or set FLYWHEEL_KFP_HOST")


def component_image(settings: Settings) -> str:
    """The component image a compiled pipeline runs on: setting ``component_image`` (the images
    and the chart set it), else the source-derived tag of this checkout (what `make images` tags).

    Never a mutable tag by default: KFP caches by image string, so a rebuilt ``:0.1.0`` would
    let cached steps answer for code they never ran.
    """
    image = settings.component_image or image_tag.component_image()
    if not image:
        raise ConfigError("setting 'component_image' is empty and this is no checkout of the project: set "
                          "FLYWHEEL_COMPONENT_IMAGE to the component image (a digest or the tag `make images` printed)")
    return image


def cluster_package(settings: Settings, image: str, s3_endpoint: str | None, folder: Path) -> Path:
    """Compile the training pipeline for the cluster into ``folder``: the path of the package.

    Refuses a setting a cluster run cannot apply; the search parallelism is the setting's.
    """
    check_cluster_compile(settings)
    cluster = ClusterOptions(s3_endpoint_url=s3_endpoint or settings.s3_endpoint_url)
    return compile_pipeline(folder / "flywheel-training.yaml", image, cluster, kfp_client.pipeline_root(settings),
                            settings.parallelism)


def kfp_cron(cron: str) -> str:
    """KFP's schedule takes six fields (seconds first); a usual five-field cron gets second 0."""
    fields = cron.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ConfigError(f"--cron {cron!r} is not a cron expression of 5 fields (min hour day month weekday) or 6 (with seconds)")
    return " ".join(fields)


def submit(settings: Settings, spec: DatasetSpec, image: str | None = None, s3_endpoint: str | None = None,
           wait: bool = False, timeout: float = 3600, poll: float = 10, run_name: str | None = None) -> dict[str, Any]:
    """Upload the pipeline (if this package is new) and start one run; optionally wait for it."""
    _check(settings)
    client = kfp_client.connect(settings)
    run = run_name or new_run_name(settings.model)
    with tempfile.TemporaryDirectory(prefix="flywheel-submit-") as tmp:
        ref = kfp_client.ensure_pipeline_version(client, cluster_package(settings, image or component_image(settings), s3_endpoint, Path(tmp)),
                                                 settings.kfp_pipeline, settings.kfp_namespace)
    experiment = kfp_client.ensure_experiment(client, settings.kfp_experiment, settings.kfp_namespace)
    run_id = kfp_client.start_run(client, experiment, ref, run, pipeline_arguments(spec, settings, run, settings.store),
                                  kfp_client.pipeline_root(settings))
    out = {"run_id": run_id, "run": run, "pipeline_version": ref.version_name, "uploaded": ref.uploaded,
           "experiment_id": experiment, "url": f"{settings.kfp_host.rstrip('/')}/#/runs/details/{run_id}", "state": None}
    if wait:
        deadline = time.monotonic() + timeout
        while True:
            state = kfp_client.run_state(client, run_id)
            if state in TERMINAL:
                out["state"] = state
                break
            if time.monotonic() > deadline:
                out["state"] = f"{state} (still running after {timeout:.0f} s)"
                break
            time.sleep(poll)
    return out


def scheduled_run_name(name: str) -> str:
    """The run name of a schedule's runs: the schedule's name and each run's own KFP job id."""
    from components.runtime import JOB_ID

    return f"{name}-{JOB_ID}"


def schedule(settings: Settings, spec: DatasetSpec, name: str, cron: str, image: str | None = None,
             s3_endpoint: str | None = None) -> dict[str, Any]:
    """A recurring run of the pipeline (one per name: an existing one is kept)."""
    _check(settings)
    expression = kfp_cron(cron)
    client = kfp_client.connect(settings)
    with tempfile.TemporaryDirectory(prefix="flywheel-schedule-") as tmp:
        ref = kfp_client.ensure_pipeline_version(client, cluster_package(settings, image or component_image(settings), s3_endpoint, Path(tmp)),
                                                 settings.kfp_pipeline, settings.kfp_namespace)
    experiment = kfp_client.ensure_experiment(client, settings.kfp_experiment, settings.kfp_namespace)
    # a recurring run's parameters are fixed: the run name carries KFP's job-id placeholder,
    # which the steps replace with their own run's id, so every scheduled run records apart
    params = pipeline_arguments(spec, settings, scheduled_run_name(name), settings.store)
    rid = kfp_client.create_recurring_run(client, experiment, ref, name, expression, params, kfp_client.pipeline_root(settings))
    return {"recurring_run_id": rid, "name": name, "cron": expression, "pipeline_version": ref.version_name,
            "experiment_id": experiment}
