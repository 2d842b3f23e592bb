"""The cluster engine of the distributed refit: a Kubeflow Trainer v2 ``TrainJob`` on its XGBoost runtime.

The refit step creates one TrainJob (``trainer.kubeflow.org/v1alpha1``) through the Kubernetes
API, waits for its ``Complete`` or ``Failed`` condition, and deletes it. The runtime (the chart's
namespaced ``TrainingRuntime`` ``flywheel-xgboost``, a copy of the Trainer's ``xgboost-distributed``
with the release's security context, ServiceAccount, ConfigMap and S3 Secret; or any runtime the
``trainer_runtime`` setting names) has the XGBoost ML policy: the Trainer injects
``DMLC_TRACKER_URI`` (rank 0's node), ``DMLC_TRACKER_PORT``, ``DMLC_TASK_ID`` and
``DMLC_NUM_WORKER`` into every node, which runs ``python -m components.distributed_xgb``; rank 0's
worker starts XGBoost's tracker there, as the runtime expects of the training code.

Why the ``kubernetes`` client and not the ``kubeflow`` SDK's TrainerClient: the deploy step already
uses it (one client, one credential path: the pod's ServiceAccount), the object is a few fields,
and TrainerClient builds its own command from a Python function, where the worker here is the
component image's own entry point; adding the SDK would add a dependency for no capability.

Every way this ends without a model raises ``TrainingFailed`` with one sentence naming the job.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from components.distributed_xgb import ENGINE_TRAINJOB, Job, Outcome, TrainingFailed, collect
from components.settings import Settings
from components.store import open_store

log = logging.getLogger("flywheel.trainjob")

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
API_VERSION = f"{GROUP}/{VERSION}"
# The Trainer's own runtime kind when the setting names just a runtime (its default).
DEFAULT_RUNTIME_KIND = "ClusterTrainingRuntime"


def runtime_ref(setting: str) -> dict[str, str]:
    """``trainer_runtime`` as a runtimeRef: ``Kind/name`` or a name (a ClusterTrainingRuntime)."""
    kind, _, name = setting.rpartition("/")
    return {"apiGroup": GROUP, "kind": kind or DEFAULT_RUNTIME_KIND, "name": name}


def manifest(job: Job, settings: Settings, name: str) -> dict[str, Any]:
    """The TrainJob that runs ``job``'s workers: one node per share, the component image's worker entry point."""
    if not settings.component_image:
        raise TrainingFailed(f"TrainJob {settings.trainer_namespace}/{name} cannot be created: setting "
                             "'component_image' (FLYWHEEL_COMPONENT_IMAGE) names no image for its workers")
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": settings.trainer_namespace,
                     "labels": {"app.kubernetes.io/part-of": "flywheel", "app.kubernetes.io/component": "refit",
                                "flywheel.io/model": settings.model}},
        "spec": {
            "runtimeRef": runtime_ref(settings.trainer_runtime),
            "activeDeadlineSeconds": int(settings.train_timeout_seconds),
            "trainer": {
                "image": settings.component_image,
                "command": ["python", "-m", "components.distributed_xgb"],
                "args": [job.store, job.prefix],
                "numNodes": job.workers,
            },
        },
    }


def condition(obj: dict[str, Any]) -> tuple[str, str] | None:
    """``("Complete", message)`` or ``("Failed", reason: message)`` once the TrainJob has finished, else None."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed"):
            text = ": ".join(x for x in (c.get("reason"), c.get("message")) if x)
            return c["type"], text
    return None


def run(job: Job, settings: Settings, api_client: Any = None, name: str | None = None) -> Outcome:
    """Create the TrainJob for ``job``, wait for it to finish, delete it; raise TrainingFailed naming it otherwise."""
    from components.deploy import kube_client

    name = name or job.prefix.rsplit("/", 1)[-1]
    body = manifest(job, settings, name)
    ns = settings.trainer_namespace
    where = f"TrainJob {ns}/{name}"
    client = api_client if api_client is not None else kube_client()
    from kubernetes import client as k8s

    api = k8s.CustomObjectsApi(client)
    _call(where, "create", lambda: api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body))
    try:
        state, text = wait(api, ns, name, settings.train_timeout_seconds)
    finally:
        _delete(api, ns, name)
    if state != "Complete":
        raise TrainingFailed(f"{where} failed: {text or 'the Trainer gave no reason'}")
    return collect(job, open_store(job.store, settings), ENGINE_TRAINJOB)


def wait(api: Any, namespace: str, name: str, timeout_seconds: float) -> tuple[str, str]:
    """Watch the TrainJob (selected by name, so ``watch`` on it is all RBAC grants) until it finishes."""
    from kubernetes import watch

    where = f"TrainJob {namespace}/{name}"
    deadline = time.monotonic() + timeout_seconds
    obj = _call(where, "read", lambda: api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
    version = obj["metadata"]["resourceVersion"]
    while (done := condition(obj)) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TrainingFailed(f"{where} did not finish within {timeout_seconds:g} s; it was deleted")

        def follow(latest: dict[str, Any] = obj, since: str = version,
                   seconds: int = max(1, int(min(left, 60)))) -> dict[str, Any]:
            w = watch.Watch()
            for event in w.stream(api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                                  field_selector=f"metadata.name={name}", resource_version=since,
                                  timeout_seconds=seconds):
                if event["type"] == "DELETED":
                    raise TrainingFailed(f"{where} was deleted before it finished")
                if event["type"] in ("ADDED", "MODIFIED"):
                    latest = event["object"]
                    if condition(latest) is not None:
                        w.stop()
            return latest

        obj = _call(where, "watch", follow)
        version = obj["metadata"]["resourceVersion"]
    return done


def _delete(api: Any, namespace: str, name: str) -> None:
    """Delete the TrainJob (its pods go with it); the refit's outcome never depends on this."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground")
    except ApiException as exc:
        if exc.status != 404:
            log.warning("TrainJob %s/%s could not be deleted: %s", namespace, name, exc.reason)
    except (HTTPError, OSError) as exc:  # an unreachable API: the failure already raised says so
        log.warning("TrainJob %s/%s could not be deleted: %s", namespace, name, exc)


def _call(where: str, verb: str, fn: Any) -> Any:
    """Run one Kubernetes API call; its errors become one sentence naming the TrainJob."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn()
    except ApiException as exc:
        if exc.status == 404 and verb == "create":
            raise TrainingFailed(f"{where} cannot be created: the Kubeflow Trainer API ({API_VERSION} trainjobs) is "
                                 "not installed in the cluster, or the namespace does not exist") from None
        if exc.status == 403:
            raise TrainingFailed(f"{where}: the refit step's ServiceAccount may not {verb} TrainJobs "
                                 "(the chart's trainJob.enabled grants it)") from None
        raise TrainingFailed(f"{where}: the Kubernetes API refused to {verb} it ({exc.status} {exc.reason})") from None
    except (HTTPError, OSError) as exc:
        raise TrainingFailed(f"{where}: the Kubernetes API is unreachable (trying to {verb} it: "
                             f"{type(exc).__name__})") from None
