"""Deploy: roll the champion out after a promotion.

Embedded (no cluster): the champion pointer is the rollout; the local server follows it and
swaps with no downtime. The step checks the version with the server's own rule
(``components.model_runtime.serving_problem``: it loads the runtime the server would serve and
reproduces the predictions recorded at registration); a version that fails is rolled back (the
pointer returns to the previous champion, which the server keeps serving).

Cluster: the version a serving pod loads is its own ``flywheel.io/model-version`` annotation:
the chart's ``MODEL_VERSION`` comes from it through the downward API (absent: follow the
champion pointer). So the annotation is the one place that says which version the cluster
serves; it cannot disagree with what the pods load. The deploy step sets it on the pod
template (a strategic merge patch, which starts a rolling update), then watches the rollout
like ``kubectl rollout status`` until it completes or the timeout passes. The chart never
renders the annotation (unless ``serving.modelVersion`` pins a version there), so a ``helm
upgrade`` or ``kubectl apply`` of the chart, three-way or server-side, leaves the deploy step's
version in place instead of quietly undoing it. A failed rollout is undone: the previous
annotation is patched back exactly (removed again when there was none), so the Deployment
returns to its old ReplicaSet, and the champion pointer, if it still names the failed
version, is rolled back too, so the registry never claims a version the cluster does not
serve. The KFP step fails on a failed rollout (``Rollout.checked``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from components.model_runtime import prefers_onnx, serving_problem
from components.registry import Registry, RegistryError
from components.settings import Settings
from components.store import open_store

log = logging.getLogger("flywheel.deploy")

CONTAINER = "serving"
ENV_VERSION = "MODEL_VERSION"
ANNOTATION = "flywheel.io/model-version"
# Where the serving container's MODEL_VERSION comes from (the downward API), so that the annotation decides.
VERSION_FIELD = f"metadata.annotations['{ANNOTATION}']"
# MODEL_VERSION that serves whatever the champion pointer names (an empty one does too).
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
        problem = serving_problem(registry, version, prefers_onnx(settings))
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


def template_patch(annotation: str | None) -> dict[str, Any]:
    """The strategic merge patch that rolls a version out: the pod template's version annotation.

    ``None`` removes it, so a restore brings the template back byte for byte and the Deployment
    reuses its previous ReplicaSet.
    """
    return {"spec": {"template": {"metadata": {"annotations": {ANNOTATION: annotation}}}}}


def rollout(api_client: Any, namespace: str, name: str, version: str, timeout_seconds: float = 300,
            poll_seconds: float = 2.0, registry: Registry | None = None) -> Rollout:
    """Set the Deployment's version annotation to ``version``, wait for the rollout; undo it if it fails."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    apps = client.AppsV1Api(api_client)
    try:
        current = apps.read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        raise DeployError(f"cannot read Deployment {namespace}/{name}: {exc.status} {exc.reason}") from None
    problem = wiring_problem(current)
    if problem:
        raise DeployError(f"Deployment {namespace}/{name}: {problem}, so its {ANNOTATION} annotation would not choose "
                          "the version it serves; install it with the Flywheel chart or the kustomize base")
    previous = served_version(current)
    annotation_before = (current.spec.template.metadata.annotations or {}).get(ANNOTATION)
    if previous == version and _complete(current):
        return Rollout("cluster", version, previous, True, reason=f"Deployment {namespace}/{name} already serves {version}")
    try:
        apps.patch_namespaced_deployment(name, namespace, template_patch(version))
    except ApiException as exc:
        raise DeployError(f"cannot patch Deployment {namespace}/{name}: {exc.status} {exc.reason}") from None
    ok, why = wait_for_rollout(apps, namespace, name, timeout_seconds, poll_seconds)
    if ok:
        log.info("Deployment %s/%s now serves %s (was %s)", namespace, name, version, previous or "the champion")
        return Rollout("cluster", version, previous, True, reason=f"rolled out {version} to {namespace}/{name}")
    log.error("rollout of %s to %s/%s failed: %s", version, namespace, name, why)
    # a first rollout (no annotation before) is undone too: the annotation is removed again, so
    # the pods follow the champion pointer as they did
    apps.patch_namespaced_deployment(name, namespace, template_patch(annotation_before))
    restored, why_restore = wait_for_rollout(apps, namespace, name, timeout_seconds, poll_seconds)
    note = ""
    if registry is not None:
        note = _restore_champion(registry, version, previous)
    what = previous or "the template that follows the champion pointer"
    state = "restored" if restored else f"restored in the spec, its rollout not finished ({why_restore})"
    return Rollout("cluster", version, previous, False, True,
                   f"rollout of {version} failed ({why}); {what} {state}{note}")


def wiring_problem(deployment: Any) -> str | None:
    """Why the serving container does not take its version from the pod's annotation, or None when it does."""
    containers = {c.name: c for c in deployment.spec.template.spec.containers or []}
    if CONTAINER not in containers:
        return f"there is no container named {CONTAINER!r}"
    env = next((e for e in containers[CONTAINER].env or [] if e.name == ENV_VERSION), None)
    source = env.value_from.field_ref if env is not None and env.value_from is not None else None
    if source is not None and source.field_path == VERSION_FIELD:
        return None
    how = (f"has no {ENV_VERSION}" if env is None else f"sets {ENV_VERSION} to {env.value!r}" if env.value_from is None
           else f"takes {ENV_VERSION} from another source")
    return f"container {CONTAINER!r} {how}, not from fieldRef {VERSION_FIELD}"


def served_version(deployment: Any) -> str | None:
    """The version a Deployment's pods serve: its pod template's annotation (None: they follow the champion pointer)."""
    annotation = (deployment.spec.template.metadata.annotations or {}).get(ANNOTATION)
    return None if annotation in (None, "", FOLLOW_CHAMPION) else annotation


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
