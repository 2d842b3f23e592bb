"""Deploy: roll the champion out after a promotion.

Embedded (no cluster): the champion pointer is the rollout; the local server follows it and
swaps with no downtime. The step checks the version the way the server accepts one (it
loads and reproduces the predictions recorded at registration); a version that fails is
rolled back (the pointer returns to the previous champion, which the server keeps serving).

Cluster: the serving Deployment is updated through the Kubernetes API (a strategic merge
patch that pins ``MODEL_VERSION`` on the ``serving`` container and stamps the
``flywheel.io/model-version`` annotation on the pod template, which starts a rolling
update), then watched like ``kubectl rollout status`` until it completes or the timeout
passes. A failed rollout is undone: the pod template's previous values are patched back
exactly (``MODEL_VERSION=champion`` from the chart included, so the Deployment returns to its
old ReplicaSet), and the champion pointer, if it still names the failed version, is rolled
back too, so the registry never claims a version the cluster does not serve. The KFP step
fails on a failed rollout (``Rollout.checked``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from components.registry import Registry, RegistryError
from components.settings import Settings
from components.store import open_store

log = logging.getLogger("flywheel.deploy")

CONTAINER = "serving"
ENV_VERSION = "MODEL_VERSION"
ANNOTATION = "flywheel.io/model-version"
# The chart's MODEL_VERSION: serve whatever the champion pointer names.
FOLLOW_CHAMPION = "champion"
Mode = Literal["auto", "embedded", "cluster"]


class DeployError(RuntimeError):
    """The rollout cannot start (no champion, no Deployment, no cluster access); says which."""


class RolloutFailed(DeployError):
    """The rollout started but did not finish; the previous state was restored (the reason says how far)."""


@dataclass(frozen=True)
class Rollout:
    """What the deploy stage did."""

    mode: str
    version: str
    previous: str | None
    succeeded: bool
    rolled_back: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def checked(self) -> Rollout:
        """This rollout if it succeeded; raises RolloutFailed with the reason otherwise (fails the KFP step)."""
        if not self.succeeded:
            raise RolloutFailed(self.reason)
        return self


def deploy(settings: Settings, version: str | None = None, mode: Mode = "auto", timeout_seconds: float | None = None,
           api_client: Any = None, kubeconfig: str | None = None, poll_seconds: float = 2.0) -> Rollout:
    """Roll ``version`` (default: the champion) out; on a failed cluster rollout, restore the previous one.

    ``mode="auto"`` means cluster when an ``api_client`` or ``kubeconfig`` is given or the
    process runs in a pod (KUBERNETES_SERVICE_HOST), embedded otherwise. ``timeout_seconds``
    defaults to the ``deploy_timeout_seconds`` setting.
    """
    registry = Registry(open_store(settings.store, settings), settings.model)
    champion = registry.champion()
    if version is None:
        if champion is None:
            raise DeployError(f"model {settings.model} has no champion to deploy; train and promote one first")
        version = champion.version
    registry.manifest(version)  # raises RegistryError naming the versions that exist
    if mode == "auto":
        in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        mode = "cluster" if (api_client is not None or kubeconfig or in_pod) else "embedded"
    if mode == "embedded":
        if champion is None or champion.version != version:
            raise DeployError(f"embedded serving follows the champion pointer, which names "
                              f"{champion.version if champion else 'no version'}, not {version}; promote {version} first")
        problem = smoke_check(registry, version)
        if problem is None:
            return Rollout("embedded", version, champion.previous, True,
                           reason="the local server follows the champion pointer and swaps to it in the background")
        if champion.previous is None:
            return Rollout("embedded", version, None, False, False,
                           f"version {version} cannot serve ({problem}); there is no previous champion: the server, "
                           "which refuses it too, keeps serving nothing")
        note = _restore_champion(registry, version, champion.previous)
        return Rollout("embedded", version, champion.previous, False, True,
                       f"version {version} cannot serve ({problem}){note}")
    client = api_client if api_client is not None else kube_client(kubeconfig)
    timeout = settings.deploy_timeout_seconds if timeout_seconds is None else timeout_seconds
    return rollout(client, settings.serving_namespace, settings.serving_deployment, version, timeout,
                   poll_seconds, registry=registry)


def smoke_check(registry: Registry, version: str, rows: int = 32) -> str | None:
    """Why ``version`` cannot serve (it does not load, or does not reproduce the predictions
    recorded with its reference rows at registration), or None when it can."""
    import io

    import numpy as np
    import pandas as pd

    from components.data import PREDICTION

    try:
        schema = registry.schema(version)
        model = registry.load_model(version)
        reference = pd.read_parquet(io.BytesIO(registry.read(version, "reference.parquet"))).head(rows)
        got = np.asarray(model.predict(reference[schema.feature_names]))
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle raises anything
        return f"{type(exc).__name__}: {exc}"
    want = reference[PREDICTION].to_numpy()
    same = (np.allclose(got.astype(float), want.astype(float), rtol=1e-6, atol=1e-9) if schema.task == "regression"
            else bool((got.astype(str) == want.astype(str)).all()))
    return None if same else "its predictions on the reference rows differ from those recorded at registration"


def kube_client(kubeconfig: str | None = None) -> Any:
    """An API client: the pod's service account in a cluster, else the kubeconfig."""
    from kubernetes import config

    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            from kubernetes import client

            return client.ApiClient()
        return config.new_client_from_config(config_file=kubeconfig)
    except config.ConfigException as exc:
        raise DeployError(f"no access to a Kubernetes cluster: {exc}") from None


def version_patch(version: str) -> dict[str, Any]:
    """The strategic merge patch that pins a version (containers and env merge by name)."""
    return template_patch(version, version)


def template_patch(env_value: str | None, annotation: str | None) -> dict[str, Any]:
    """A strategic merge patch setting the serving container's MODEL_VERSION and the pod-template annotation.

    ``None`` removes them (a null annotation, a ``$patch: delete`` env entry), so a restore
    brings the template back byte for byte and the Deployment reuses its previous ReplicaSet.
    """
    env: dict[str, Any] = ({"name": ENV_VERSION, "value": env_value} if env_value is not None
                           else {"name": ENV_VERSION, "$patch": "delete"})
    return {"spec": {"template": {
        "metadata": {"annotations": {ANNOTATION: annotation}},
        "spec": {"containers": [{"name": CONTAINER, "env": [env]}]},
    }}}


def rollout(api_client: Any, namespace: str, name: str, version: str, timeout_seconds: float = 300,
            poll_seconds: float = 2.0, registry: Registry | None = None) -> Rollout:
    """Patch the Deployment to ``version``, wait for the rollout; undo it if it fails."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    apps = client.AppsV1Api(api_client)
    try:
        current = apps.read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        raise DeployError(f"cannot read Deployment {namespace}/{name}: {exc.status} {exc.reason}") from None
    previous = served_version(current)
    env_before, annotation_before = template_values(current)
    if previous == version and _complete(current):
        return Rollout("cluster", version, previous, True, reason=f"Deployment {namespace}/{name} already serves {version}")
    try:
        apps.patch_namespaced_deployment(name, namespace, version_patch(version))
    except ApiException as exc:
        raise DeployError(f"cannot patch Deployment {namespace}/{name}: {exc.status} {exc.reason}") from None
    ok, why = wait_for_rollout(apps, namespace, name, timeout_seconds, poll_seconds)
    if ok:
        log.info("Deployment %s/%s now serves %s (was %s)", namespace, name, version, previous)
        return Rollout("cluster", version, previous, True, reason=f"rolled out {version} to {namespace}/{name}")
    log.error("rollout of %s to %s/%s failed: %s", version, namespace, name, why)
    # a first rollout (nothing pinned before) is undone too: the template loses MODEL_VERSION and
    # the annotation again, so the pods serve what they served before
    apps.patch_namespaced_deployment(name, namespace, template_patch(env_before, annotation_before))
    restored, why_restore = wait_for_rollout(apps, namespace, name, timeout_seconds, poll_seconds)
    note = ""
    if registry is not None:
        note = _restore_champion(registry, version, previous)
    what = previous or (f"{ENV_VERSION}={env_before}" if env_before is not None else "the unpinned template")
    state = "restored" if restored else f"restored in the spec, its rollout not finished ({why_restore})"
    return Rollout("cluster", version, previous, False, True,
                   f"rollout of {version} failed ({why}); {what} {state}{note}")


def template_values(deployment: Any) -> tuple[str | None, str | None]:
    """The serving container's MODEL_VERSION value and the pod-template annotation, as they are (None: absent)."""
    env_value = None
    for c in deployment.spec.template.spec.containers or []:
        if c.name == CONTAINER:
            env_value = next((e.value for e in c.env or [] if e.name == ENV_VERSION), None)
    annotations = deployment.spec.template.metadata.annotations or {}
    return env_value, annotations.get(ANNOTATION)


def served_version(deployment: Any) -> str | None:
    """The version a Deployment pins: the container env, else the pod-template annotation."""
    spec = deployment.spec.template.spec
    for c in spec.containers or []:
        if c.name == CONTAINER:
            for e in c.env or []:
                if e.name == ENV_VERSION and e.value and e.value != FOLLOW_CHAMPION:
                    return e.value
    annotations = deployment.spec.template.metadata.annotations or {}
    return annotations.get(ANNOTATION)


def wait_for_rollout(apps: Any, namespace: str, name: str, timeout_seconds: float,
                     poll_seconds: float) -> tuple[bool, str]:
    """Poll like ``kubectl rollout status``; (True, "") when complete, else (False, why)."""
    deadline = time.monotonic() + timeout_seconds
    why = "not started"
    while True:
        d = apps.read_namespaced_deployment(name, namespace)
        if _complete(d):
            return True, ""
        current = d.status is not None and (d.status.observed_generation or 0) >= (d.metadata.generation or 0)
        for cond in (d.status.conditions or []) if current else []:  # older conditions describe an older rollout
            if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
                return False, f"progress deadline exceeded: {cond.message or 'pods did not become ready'}"
        st = d.status
        why = (f"{st.updated_replicas or 0}/{d.spec.replicas} updated, {st.available_replicas or 0} available"
               if st else "no status yet")
        if time.monotonic() >= deadline:
            return False, f"timed out after {timeout_seconds:g}s ({why})"
        time.sleep(poll_seconds)


def _complete(d: Any) -> bool:
    st = d.status
    if st is None or (st.observed_generation or 0) < (d.metadata.generation or 0):
        return False
    want = d.spec.replicas if d.spec.replicas is not None else 1
    return ((st.updated_replicas or 0) >= want and (st.replicas or 0) == (st.updated_replicas or 0)
            and (st.available_replicas or 0) >= want)


def _restore_champion(registry: Registry, failed: str, previous: str | None) -> str:
    """Point the champion back at what the cluster serves again.

    ``previous`` is the version the Deployment pinned; None means it followed the champion
    pointer, so the pointer goes back to its own predecessor.
    """
    champ = registry.champion()
    if champ is None or champ.version != failed:
        return ""
    target = previous or champ.previous
    if not target:
        return f"; the champion pointer still names {failed} (it has no predecessor)"
    try:
        registry.promote(target, f"rollout of {failed} failed", expected=failed)
    except RegistryError as exc:
        return f"; the champion pointer still names {failed} ({exc})"
    return f"; champion pointer restored to {target}"
