"""The KFP API client code shared by the cluster trigger, ``flywheel submit`` and ``flywheel schedule``.

Everything goes through ``kfp.Client`` (KFP 2.17). Three things it does not do for us:

* a fast, clear failure when the API is down: ``kfp.Client()`` retries healthz five times
  with 5 s sleeps, so the API's ``/apis/v2beta1/healthz`` is probed first with a short timeout;
* in-cluster auth with an explicit host: ``kfp.Client`` applies the pipelines service-account
  token only when no host is given, so when the projected token file exists it is handed
  over as credentials (re-read on every call, as the kubelet rotates it);
* idempotent uploads: a pipeline version is named after the package's content hash, so
  submitting the same compiled package twice reuses the version instead of piling up copies;
* a version preflight: the backend's healthz names its release (``tag_name``); one older than
  ``MIN_KFP`` cannot run the compiled pipeline (the exit handler's PipelineTaskFinalStatus,
  ``dsl.Collected``), so it is refused before anything is uploaded;
* the pipeline root on every run: the backend ignores the package's ``defaultPipelineRoot`` for
  runs created through the API (it takes the run's ``pipeline_root``, then the ``kfp-launcher``
  ConfigMap), so every run and recurring run names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from components.settings import Settings

FINISHED = {"SUCCEEDED": "succeeded", "FAILED": "failed", "CANCELED": "failed", "SKIPPED": "failed"}
# dsl.Collected needs 2.14; set_security_context is read from 2.16; before 2.17 a ParallelFor
# inside an ExitHandler left the handler RUNNING.
MIN_KFP = (2, 14)
RECOMMENDED_KFP = (2, 17)
_RELEASE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


class KFPError(RuntimeError):
    """The KFP API cannot do what was asked; the message names the host and the step."""


@dataclass(frozen=True)
class PipelineRef:
    pipeline_id: str
    version_id: str
    version_name: str
    uploaded: bool


def backend_version(tag_name: str | None) -> tuple[int, int, int] | None:
    """The release a healthz ``tag_name`` names (``2.17.0``, ``v2.5.0-rc.1``); None for a dev build ("unknown")."""
    m = _RELEASE.match((tag_name or "").strip())
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def check_backend(host: str, healthz: dict[str, Any], settings: Settings) -> None:
    """Refuse a backend that cannot run the pipeline, or a multi-user one without a namespace, in one sentence."""
    tag = healthz.get("tag_name")
    version = backend_version(tag)
    need = ".".join(map(str, MIN_KFP))
    if version is not None and version[:2] < MIN_KFP:
        raise KFPError(f"KFP backend at {host} is version {tag}, which cannot run Flywheel's pipeline: "
                       f"Kubeflow Pipelines {need} or later is required ({'.'.join(map(str, RECOMMENDED_KFP))} or later recommended)")
    if healthz.get("multi_user") and not settings.kfp_namespace:
        raise KFPError(f"KFP backend at {host} runs in multi-user mode: set FLYWHEEL_KFP_NAMESPACE "
                       "(config.kfp.namespace in the chart) to your profile namespace")


def connect(settings: Settings, token_path: str | None | object = ..., timeout: float = 5.0):
    """A ``kfp.Client`` for ``settings.kfp_host``, after checking the API answers and its version.

    ``token_path`` defaults to the ``kfp_token_path`` setting; when that file exists (the
    projected ServiceAccount token with audience ``pipelines.kubeflow.org``) every call
    carries it. ``None`` sends no token.
    """
    import kfp

    host = settings.kfp_host
    if not host:
        raise KFPError("setting 'kfp_host' is empty: set FLYWHEEL_KFP_HOST to the KFP API, e.g. http://ml-pipeline.kubeflow:8888")
    host = host.rstrip("/")
    if token_path is ...:
        token_path = settings.kfp_token_path
    headers = {}
    credentials = None
    if isinstance(token_path, str) and token_path and Path(token_path).is_file():
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        credentials = ServiceAccountTokenVolumeCredentials(path=token_path)
        headers["Authorization"] = f"Bearer {Path(token_path).read_text().strip()}"
    try:
        r = httpx.get(f"{host}/apis/v2beta1/healthz", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise KFPError(f"KFP API at {host} is unreachable: {exc}") from None
    if r.status_code != 200:
        raise KFPError(f"KFP API at {host} answered healthz with HTTP {r.status_code}: {r.text[:200]}")
    try:
        healthz = r.json()
    except ValueError:
        raise KFPError(f"KFP API at {host} answered healthz with something that is not JSON: {r.text[:200]}") from None
    check_backend(host, healthz if isinstance(healthz, dict) else {}, settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
        return kfp.Client(host=host, namespace=settings.kfp_namespace or "kubeflow", credentials=credentials)


def pipeline_root(settings: Settings) -> str:
    """Where a cluster run's artifacts go: the ``pipeline_root`` setting when it is a URI, else ``<store>/pipeline_root``."""
    if "://" in settings.pipeline_root:
        return settings.pipeline_root
    return f"{settings.store.rstrip('/')}/pipeline_root"


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


def ensure_pipeline_version(client, package_path: str | Path, pipeline_name: str, namespace: str | None = None) -> PipelineRef:
    """The pipeline version holding exactly this compiled package, uploading it if none does.

    With a ``namespace`` (multi-user KFP) the pipeline is private to that profile namespace,
    which the profile's RBAC allows; a shared pipeline would need cluster-wide rights.
    """
    host = _host(client)
    if not Path(package_path).is_file():
        raise KFPError(f"compiled pipeline {package_path} does not exist: run `make compile` first")
    version_name = f"{pipeline_name}-{package_digest(package_path)[:12]}"
    by_name = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": pipeline_name}]})
    listed = _call(f"look up pipeline {pipeline_name!r}", host, client.list_pipelines, filter=by_name, namespace=namespace)
    pipeline_id = listed.pipelines[0].pipeline_id if listed.pipelines else None
    if pipeline_id is None:
        pipe = _call(f"upload pipeline {pipeline_name!r}", host, client.upload_pipeline, str(package_path),
                     pipeline_name=pipeline_name, description="Flywheel training pipeline", namespace=namespace)
        pipeline_id = pipe.pipeline_id
    found = _call(f"list versions of pipeline {pipeline_name!r}", host, client.list_pipeline_versions, pipeline_id,
                  filter=json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": version_name}]}))
    if found.pipeline_versions:
        return PipelineRef(pipeline_id, found.pipeline_versions[0].pipeline_version_id, version_name, False)
    ver = _call(f"upload version {version_name!r}", host, client.upload_pipeline_version, str(package_path),
                pipeline_version_name=version_name, pipeline_id=pipeline_id)
    return PipelineRef(pipeline_id, ver.pipeline_version_id, version_name, True)


def start_run(client, experiment_id: str, ref: PipelineRef, run_name: str, params: dict[str, Any], root: str) -> str:
    """Start one run of the pipeline version with its artifacts under ``root``; returns the run id."""
    run = _call(f"start run {run_name!r}", _host(client), client.run_pipeline, experiment_id=experiment_id,
                job_name=run_name, params=params, pipeline_id=ref.pipeline_id, version_id=ref.version_id,
                pipeline_root=root)
    return run.run_id


def run_state(client, run_id: str) -> str:
    """The run's KFP state (PENDING, RUNNING, SUCCEEDED, FAILED, …)."""
    run = _call(f"read run {run_id}", _host(client), client.get_run, run_id)
    return str(run.state or "RUNTIME_STATE_UNSPECIFIED")


def create_recurring_run(client, experiment_id: str, ref: PipelineRef, name: str, cron: str,
                         params: dict[str, Any], root: str, max_concurrency: int = 1) -> str:
    """A recurring run (KFP's 6-field cron), created once per name: an existing one is reused."""
    host = _host(client)
    existing = _call("list recurring runs", host, client.list_recurring_runs, experiment_id=experiment_id, page_size=100)
    for rr in existing.recurring_runs or []:
        if rr.display_name == name:
            return rr.recurring_run_id
    rr = _call(f"create recurring run {name!r}", host, client.create_recurring_run, experiment_id=experiment_id,
               job_name=name, cron_expression=cron, params=params, pipeline_id=ref.pipeline_id,
               version_id=ref.version_id, max_concurrency=max_concurrency, no_catchup=True, pipeline_root=root)
    return rr.recurring_run_id
