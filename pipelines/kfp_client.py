"""The KFP API client code shared by the cluster trigger, ``flywheel submit`` and ``flywheel schedule``.

Everything goes through ``kfp.Client`` (KFP 2.17). Three things it does not do for us:

* a fast, clear failure when the API is down: ``kfp.Client()`` retries healthz five times
  with 5 s sleeps, so the API's ``/apis/v2beta1/healthz`` is probed first with a short timeout;
* in-cluster auth with an explicit host: ``kfp.Client`` applies the pipelines service-account
  token only when no host is given, so when the projected token file exists it is handed
  over as credentials (re-read on every call, as the kubelet rotates it);
* idempotent uploads: a pipeline version is named after the package's content hash, so
  submitting the same compiled package twice reuses the version instead of piling up copies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from components.settings import Settings

# Where KFP's own ServiceAccountTokenVolumeCredentials looks (kfp.client.KF_PIPELINES_SA_TOKEN_PATH).
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
FINISHED = {"SUCCEEDED": "succeeded", "FAILED": "failed", "CANCELED": "failed", "SKIPPED": "failed"}


class KFPError(RuntimeError):
    """The KFP API cannot do what was asked; the message names the host and the step."""


@dataclass(frozen=True)
class PipelineRef:
    pipeline_id: str
    version_id: str
    version_name: str
    uploaded: bool


def connect(settings: Settings, token_path: str | None = SA_TOKEN_PATH, timeout: float = 5.0):
    """A ``kfp.Client`` for ``settings.kfp_host``, after checking the API answers."""
    import kfp

    host = settings.kfp_host
    if not host:
        raise KFPError("setting 'kfp_host' is empty: set FLYWHEEL_KFP_HOST to the KFP API, e.g. http://ml-pipeline.kubeflow:8888")
    host = host.rstrip("/")
    headers = {}
    credentials = None
    if token_path and Path(token_path).is_file():
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        credentials = ServiceAccountTokenVolumeCredentials(path=token_path)
        headers["Authorization"] = f"Bearer {Path(token_path).read_text().strip()}"
    try:
        r = httpx.get(f"{host}/apis/v2beta1/healthz", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise KFPError(f"KFP API at {host} is unreachable: {exc}") from None
    if r.status_code != 200:
        raise KFPError(f"KFP API at {host} answered healthz with HTTP {r.status_code}: {r.text[:200]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
        return kfp.Client(host=host, namespace=settings.kfp_namespace or "kubeflow", credentials=credentials)


def _call(what: str, host: str, fn, *args, **kwargs):
    """Run one kfp.Client call; API and network errors become one KFPError sentence."""
    import kfp_server_api
    import urllib3

    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # kfp.Client prints UI links
            return fn(*args, **kwargs)
    except kfp_server_api.ApiException as exc:
        raise KFPError(f"KFP API at {host} refused to {what}: HTTP {exc.status} {_message(exc.body)}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise KFPError(f"KFP API at {host} is unreachable while trying to {what}: {exc}") from None


def _message(body: Any) -> str:
    try:
        return json.loads(body).get("message") or json.loads(body).get("error") or str(body)[:200]
    except (TypeError, ValueError, AttributeError):
        return str(body)[:200]


def _host(client) -> str:
    return client._existing_config.host


def ensure_experiment(client, name: str, namespace: str | None = None) -> str:
    """The experiment's id, creating it on first use."""
    exp = _call(f"create or find experiment {name!r}", _host(client), client.create_experiment, name=name, namespace=namespace)
    return exp.experiment_id


def package_digest(package_path: str | Path) -> str:
    return hashlib.sha256(Path(package_path).read_bytes()).hexdigest()


def ensure_pipeline_version(client, package_path: str | Path, pipeline_name: str) -> PipelineRef:
    """The pipeline version holding exactly this compiled package, uploading it if none does."""
    host = _host(client)
    if not Path(package_path).is_file():
        raise KFPError(f"compiled pipeline {package_path} does not exist: run `make compile` first")
    version_name = f"{pipeline_name}-{package_digest(package_path)[:12]}"
    pipeline_id = _call(f"look up pipeline {pipeline_name!r}", host, client.get_pipeline_id, pipeline_name)
    if pipeline_id is None:
        pipe = _call(f"upload pipeline {pipeline_name!r}", host, client.upload_pipeline, str(package_path),
                     pipeline_name=pipeline_name, description="Flywheel training pipeline")
        pipeline_id = pipe.pipeline_id
    found = _call(f"list versions of pipeline {pipeline_name!r}", host, client.list_pipeline_versions, pipeline_id,
                  filter=json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": version_name}]}))
    if found.pipeline_versions:
        return PipelineRef(pipeline_id, found.pipeline_versions[0].pipeline_version_id, version_name, False)
    ver = _call(f"upload version {version_name!r}", host, client.upload_pipeline_version, str(package_path),
                pipeline_version_name=version_name, pipeline_id=pipeline_id)
    return PipelineRef(pipeline_id, ver.pipeline_version_id, version_name, True)


def start_run(client, experiment_id: str, ref: PipelineRef, run_name: str, params: dict[str, Any]) -> str:
    """Start one run of the pipeline version; returns the run id."""
    run = _call(f"start run {run_name!r}", _host(client), client.run_pipeline, experiment_id=experiment_id,
                job_name=run_name, params=params, pipeline_id=ref.pipeline_id, version_id=ref.version_id)
    return run.run_id


def run_state(client, run_id: str) -> str:
    """The run's KFP state (PENDING, RUNNING, SUCCEEDED, FAILED, …)."""
    run = _call(f"read run {run_id}", _host(client), client.get_run, run_id)
    return str(run.state or "RUNTIME_STATE_UNSPECIFIED")


def create_recurring_run(client, experiment_id: str, ref: PipelineRef, name: str, cron: str,
                         params: dict[str, Any], max_concurrency: int = 1) -> str:
    """A recurring run (KFP's 6-field cron), created once per name: an existing one is reused."""
    host = _host(client)
    existing = _call("list recurring runs", host, client.list_recurring_runs, experiment_id=experiment_id, page_size=100)
    for rr in existing.recurring_runs or []:
        if rr.display_name == name:
            return rr.recurring_run_id
    rr = _call(f"create recurring run {name!r}", host, client.create_recurring_run, experiment_id=experiment_id,
               job_name=name, cron_expression=cron, params=params, pipeline_id=ref.pipeline_id,
               version_id=ref.version_id, max_concurrency=max_concurrency, no_catchup=True)
    return rr.recurring_run_id
