"""The deploy step against a real kube-apiserver, with the chart's RBAC objects applied.

The deploy step authenticates as the chart's deployer subject (KFP's pipeline runner) with a
TokenRequest token. The API server decides what it may do, merges the patch, and its
Deployment controller creates the ReplicaSets. There is no kubelet, so pods stay Pending and
a rollout never completes by itself: that is the timeout-and-restore path. For the success
path the test plays the kubelet's only part that matters here, reporting pods Ready through
the pods/status subresource; what a pod would serve is its MODEL_VERSION resolved the way the
kubelet resolves it (``_served``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.deploy import ANNOTATION, DeployError, RolloutFailed, deploy
from components.registry import Registry
from components.settings import load_settings
from components.store import LocalStore
from testkit.models import two_regressor_versions
from tests.apiserver.cluster import (
    DEPLOYER,
    KFP_NAMESPACE,
    MULTI_USER_NAMESPACE,
    PROFILE,
    RELEASE_NAMESPACE,
    Applied,
    apply_chart,
    can_i,
    helm_render,
    token_for,
    wait_for,
)
from tests.apiserver.control_plane import ControlPlane

SERVING = "flywheel-serving"
AS_DEPLOYER = f"--as=system:serviceaccount:{DEPLOYER[0]}:{DEPLOYER[1]}"


@pytest.fixture(scope="module")
def api(cluster: tuple[ControlPlane, Applied]):
    """Typed API clients: admin (the test's own view) and the deployer's kubeconfig."""
    from kubernetes import client, config

    cp, _ = cluster
    admin = config.new_client_from_config(config_file=str(cp.kubeconfig()))
    deployer_config = cp.kubeconfig(token_for(cp, *DEPLOYER), name="deployer")
    return cp, client.AppsV1Api(admin), client.CoreV1Api(admin), deployer_config


@pytest.fixture
def two_versions(tmp_path: Path):
    """Champion v2 with v1 as its predecessor, on a local store."""
    settings = load_settings(store=str(tmp_path / "store"), model="wine", spill_dir=str(tmp_path / "spill"),
                             serving_namespace=RELEASE_NAMESPACE, serving_deployment=SERVING)
    registry = Registry(LocalStore(tmp_path / "store"), "wine")
    two_regressor_versions(registry)
    return settings, registry


def _served(template) -> str:
    """The version a pod of this template loads: MODEL_VERSION as the kubelet resolves it (a literal,
    or the downward API's annotation, "" when absent) and as the service reads it ("" follows the champion)."""
    container = next(c for c in template.spec.containers if c.name == "serving")
    env = next(e for e in container.env if e.name == "MODEL_VERSION")
    if env.value_from is None:
        value = env.value
    else:
        match = re.fullmatch(r"metadata\.annotations\['(.+)'\]", env.value_from.field_ref.field_path)
        value = (template.metadata.annotations or {}).get(match[1], "")
    return value or "champion"


def _annotation(template) -> str | None:
    return (template.metadata.annotations or {}).get(ANNOTATION)


def _replica_sets(apps, name: str = SERVING) -> list:
    rs = apps.list_namespaced_replica_set(RELEASE_NAMESPACE).items
    return sorted((r for r in rs if any(o.name == name for o in r.metadata.owner_references or [])),
                  key=lambda r: int(r.metadata.annotations["deployment.kubernetes.io/revision"]))


def _reset(apps, name: str = SERVING) -> None:
    """Back to the chart's template (no version annotation: follow the champion pointer), as admin."""
    from components.deploy import template_patch

    apps.patch_namespaced_deployment(name, RELEASE_NAMESPACE, template_patch(None))


def test_the_server_takes_every_chart_object_it_serves(cluster) -> None:
    _, applied = cluster
    assert applied.kinds("skipped") == {("autoscaling/v2", "HorizontalPodAutoscaler"),
                                        ("policy/v1", "PodDisruptionBudget"), ("batch/v1", "CronJob")}
    assert {("v1", "ServiceAccount"), ("rbac.authorization.k8s.io/v1", "Role"),
            ("rbac.authorization.k8s.io/v1", "RoleBinding"), ("apps/v1", "Deployment")} <= applied.kinds("applied")
    # the only field newer than 1.20 in what it took; the deploy step never touches it
    assert set(applied.removed) <= {f"Deployment/{SERVING}: containers[serving].lifecycle.preStop.sleep"}


def test_the_deployer_may_patch_only_the_serving_deployment(api) -> None:
    cp, apps, _, deployer = api
    ns = ["-n", RELEASE_NAMESPACE]
    assert can_i(cp, "patch", f"deployments/{SERVING}", *ns, AS_DEPLOYER)
    assert can_i(cp, "get", f"deployments/{SERVING}", *ns, AS_DEPLOYER)
    assert not can_i(cp, "patch", "deployments/other", *ns, AS_DEPLOYER)
    assert not can_i(cp, "list", "deployments", *ns, AS_DEPLOYER)
    assert not can_i(cp, "create", "deployments", *ns, AS_DEPLOYER)
    assert not can_i(cp, "delete", f"deployments/{SERVING}", *ns, AS_DEPLOYER)
    assert not can_i(cp, "patch", f"deployments/{SERVING}", "-n", KFP_NAMESPACE, AS_DEPLOYER)
    assert not can_i(cp, "get", "secrets", *ns, AS_DEPLOYER)
    # the token the step runs with says the same about itself
    assert can_i(cp, "patch", f"deployments/{SERVING}", *ns, kubeconfig=deployer)
    assert not can_i(cp, "patch", "deployments/other", *ns, kubeconfig=deployer)


def test_a_patch_of_another_deployment_is_refused(api, two_versions) -> None:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    cp, apps, _, deployer = api
    cp.kubectl("-n", RELEASE_NAMESPACE, "create", "deployment", "other", "--image=registry.invalid/other:1")
    before = apps.read_namespaced_deployment("other", RELEASE_NAMESPACE)
    as_deployer = client.AppsV1Api(config.new_client_from_config(config_file=str(deployer)))
    with pytest.raises(ApiException) as exc:
        as_deployer.patch_namespaced_deployment("other", RELEASE_NAMESPACE,
                                                {"spec": {"template": {"metadata": {"annotations": {ANNOTATION: "v2"}}}}})
    assert exc.value.status == 403
    settings, _ = two_versions
    with pytest.raises(DeployError, match=f"cannot read Deployment {RELEASE_NAMESPACE}/other: 403 Forbidden"):
        deploy(settings.model_copy(update={"serving_deployment": "other"}), mode="cluster", kubeconfig=str(deployer))
    after = apps.read_namespaced_deployment("other", RELEASE_NAMESPACE)
    assert after.metadata.generation == before.metadata.generation


def test_a_rollout_that_misses_the_deadline_is_restored_and_fails_the_step(api, two_versions) -> None:
    cp, apps, _, deployer = api
    settings, registry = two_versions
    _reset(apps)
    original = wait_for(lambda: _replica_sets(apps), what="the Deployment controller's first ReplicaSet")[-1]
    assert _served(original.spec.template) == "champion" and _annotation(original.spec.template) is None
    containers = apps.read_namespaced_deployment(SERVING, RELEASE_NAMESPACE).spec.template.spec.containers

    result = deploy(settings.model_copy(update={"deploy_timeout_seconds": 3}), mode="cluster",
                    kubeconfig=str(deployer), poll_seconds=0.2)

    assert not result.succeeded and result.rolled_back and result.previous is None, result
    assert "timed out after 3s" in result.reason and "the template that follows the champion pointer restored" in result.reason
    with pytest.raises(RolloutFailed, match="rollout of v2 failed"):
        result.checked()
    # the patch made a new ReplicaSet for v2; the restore made the original one current again
    sets = _replica_sets(apps)
    pinned = [r for r in sets if _annotation(r.spec.template) == "v2"]
    assert len(pinned) == 1 and _served(pinned[0].spec.template) == "v2"
    assert sets[-1].metadata.uid == original.metadata.uid, "restore returns to the old ReplicaSet, not a new one"
    dep = apps.read_namespaced_deployment(SERVING, RELEASE_NAMESPACE)
    assert _annotation(dep.spec.template) is None and _served(dep.spec.template) == "champion"
    assert dep.spec.template.spec.containers == containers, "the patch touches the annotation only"
    # the Deployment followed the champion pointer, so the pointer goes back to what it named before
    assert registry.champion().version == "v1" and "champion pointer restored to v1" in result.reason


def test_a_deployment_whose_version_is_not_its_annotation_is_refused_untouched(api, two_versions) -> None:
    """An annotation that would not decide what the pods load is never set: it would lie."""
    import yaml

    cp, apps, _, _ = api
    settings, registry = two_versions
    name = "hand-made"
    cp.kubectl("-n", RELEASE_NAMESPACE, "apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "serving", "image": "registry.invalid/serving:1",
                                     "env": [{"name": "MODEL_VERSION", "value": "v1"}]}]}}}}))
    before = apps.read_namespaced_deployment(name, RELEASE_NAMESPACE)

    with pytest.raises(DeployError) as exc:
        deploy(settings.model_copy(update={"serving_deployment": name}), mode="cluster", kubeconfig=str(cp.kubeconfig()))

    assert str(exc.value) == (
        f"Deployment {RELEASE_NAMESPACE}/{name}: container 'serving' sets MODEL_VERSION to 'v1', not from fieldRef "
        f"metadata.annotations['{ANNOTATION}'], so its {ANNOTATION} annotation would not choose the version it serves; "
        "install it with the Flywheel chart or the kustomize base")
    assert apps.read_namespaced_deployment(name, RELEASE_NAMESPACE).metadata.generation == before.metadata.generation
    assert registry.champion().version == "v2"


def _play_kubelet(core, stop: threading.Event) -> None:
    """Report every serving pod Running and Ready, as a kubelet would once its probes pass."""
    import datetime as dt

    from kubernetes.client.exceptions import ApiException

    while not stop.is_set():
        for pod in core.list_namespaced_pod(RELEASE_NAMESPACE, label_selector=f"app.kubernetes.io/name={SERVING}").items:
            if pod.metadata.deletion_timestamp or (pod.status.phase == "Running"):
                continue
            now = dt.datetime.now(dt.UTC).isoformat()
            ready = [{"type": t, "status": "True", "lastTransitionTime": now}
                     for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
            try:
                core.patch_namespaced_pod_status(pod.metadata.name, RELEASE_NAMESPACE,
                                                 {"status": {"phase": "Running", "conditions": ready}})
            except ApiException as exc:
                if exc.status != 404:  # a pod the ReplicaSet controller deleted meanwhile
                    raise
        stop.wait(0.2)


@contextlib.contextmanager
def _kubelet(core) -> Iterator[None]:
    """A kubelet's part, played while the block runs."""
    stop = threading.Event()
    kubelet = threading.Thread(target=_play_kubelet, args=(core, stop), daemon=True)
    kubelet.start()
    try:
        yield
    finally:
        stop.set()
        kubelet.join()


def test_a_rollout_whose_pods_become_ready_completes(api, two_versions) -> None:
    cp, apps, core, deployer = api
    settings, registry = two_versions
    _reset(apps)
    with _kubelet(core):
        result = deploy(settings, version="v1", mode="cluster", kubeconfig=str(deployer), poll_seconds=0.2,
                        timeout_seconds=60)
    assert result.succeeded and result.checked() is result, result.reason
    dep = apps.read_namespaced_deployment(SERVING, RELEASE_NAMESPACE)
    assert _served(dep.spec.template) == _annotation(dep.spec.template) == "v1"
    current = _replica_sets(apps)[-1]
    assert _served(current.spec.template) == "v1" and current.status.available_replicas == 1
    assert all((r.spec.replicas or 0) == 0 for r in _replica_sets(apps)[:-1]), "old ReplicaSets scaled down"
    assert registry.champion().version == "v2", "a successful rollout leaves the pointer alone"


@pytest.mark.parametrize("server_side", [False, True], ids=["three-way apply (Helm 3)", "server-side apply (Helm 4)"])
def test_reapplying_the_chart_keeps_the_version_the_deploy_step_rolled_out(api, two_versions, server_side) -> None:
    """Issue 21.4: re-applying the chart (an upgrade) never changes the served version unannounced.

    The deploy step rolls v1 out; the chart is applied again, first unchanged (nothing rolls),
    then with a changed value (the pods roll): what the pods load and what the annotation says
    stay v1, the same value, while the champion pointer names v2.
    """
    cp, apps, core, deployer = api
    settings, registry = two_versions
    _reset(apps)
    with _kubelet(core):
        assert deploy(settings, version="v1", mode="cluster", kubeconfig=str(deployer), poll_seconds=0.2,
                      timeout_seconds=60).succeeded
    rolled = apps.read_namespaced_deployment(SERVING, RELEASE_NAMESPACE)
    assert _served(rolled.spec.template) == _annotation(rolled.spec.template) == "v1"

    apply_chart(cp, helm_render(), server_side=server_side)

    same = apps.read_namespaced_deployment(SERVING, RELEASE_NAMESPACE)
    assert _served(same.spec.template) == _annotation(same.spec.template) == "v1"
    # (not the generation: a server-side apply rewrites kubectl's last-applied annotation, which bumps it)
    assert same.spec.template == rolled.spec.template, "an unchanged chart changes no pod template: nothing rolls"

    upgrade = {"serving": {"podAnnotations": {"example.com/upgraded": "yes"}}}
    apply_chart(cp, helm_render(upgrade), server_side=server_side)

    upgraded = apps.read_namespaced_deployment(SERVING, RELEASE_NAMESPACE)
    assert upgraded.spec.template.metadata.annotations["example.com/upgraded"] == "yes", "the changed template rolls the pods"
    assert _served(upgraded.spec.template) == _annotation(upgraded.spec.template) == "v1"
    newest = wait_for(lambda: [r for r in _replica_sets(apps) if "example.com/upgraded" in _annotations(r)],
                      what="the upgrade's ReplicaSet")[-1]
    assert _served(newest.spec.template) == "v1", "the upgrade's pods load the version the deploy step rolled out"
    assert registry.champion().version == "v2"
    apply_chart(cp, helm_render(), server_side=server_side)  # the chart as the other tests expect it
    _reset(apps)


def _annotations(replica_set) -> dict[str, str]:
    return replica_set.spec.template.metadata.annotations or {}


def test_a_version_pinned_in_the_values_is_what_the_annotation_says(api) -> None:
    """serving.modelVersion pins through the same annotation, so a pin in the chart cannot lie either."""
    cp, apps, _, _ = api
    apply_chart(cp, helm_render({"serving": {"modelVersion": "v1"}}))
    pinned = apps.read_namespaced_deployment(SERVING, RELEASE_NAMESPACE)
    assert _served(pinned.spec.template) == _annotation(pinned.spec.template) == "v1"
    apply_chart(cp, helm_render())
    unpinned = apps.read_namespaced_deployment(SERVING, RELEASE_NAMESPACE)
    assert _annotation(unpinned.spec.template) is None and _served(unpinned.spec.template) == "champion"


def _flywheel(settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "flywheel"), *args, "--store", settings.store, "--model",
                           settings.model], capture_output=True, text=True, timeout=180, check=False,
                          env={**os.environ, "FLYWHEEL_SERVING_NAMESPACE": RELEASE_NAMESPACE, **env})


def test_flywheel_deploy_rolls_a_version_out_on_the_cluster(api, two_versions) -> None:
    """Issue 21.8: the command, as the deployer, with its kubeconfig; refused as it would be in the step."""
    cp, apps, core, deployer = api
    settings, _ = two_versions
    _reset(apps)
    with _kubelet(core):
        done = _flywheel(settings, "deploy", "v1", "--kubeconfig", str(deployer), "--timeout", "60")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["mode"], out["version"], out["succeeded"]) == ("cluster", "v1", True), out
    dep = apps.read_namespaced_deployment(SERVING, RELEASE_NAMESPACE)
    assert _served(dep.spec.template) == _annotation(dep.spec.template) == "v1"

    refused = _flywheel(settings, "deploy", "--kubeconfig", str(deployer), FLYWHEEL_SERVING_DEPLOYMENT="other")
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"error: cannot read Deployment {RELEASE_NAMESPACE}/other: 403 Forbidden"
    _reset(apps)


def test_the_monitor_has_no_kubernetes_api_grant(api) -> None:
    """Issue 21.6: its pods mount no token, so a grant to its ServiceAccount could never be used."""
    cp, *_ = api
    monitor = f"--as=system:serviceaccount:{RELEASE_NAMESPACE}:flywheel-monitor"
    assert not can_i(cp, "get", "configmaps/flywheel-config", "-n", RELEASE_NAMESPACE, monitor)
    assert not can_i(cp, "get", f"deployments/{SERVING}", "-n", RELEASE_NAMESPACE, monitor)


# --- multi-user KFP: the profile namespace's RBAC and the projected token ------------------------

def kfp_access(cp: ControlPlane, user: str, namespace: str, verb: str, resource: str) -> bool:
    """The SubjectAccessReview KFP's API server sends before it acts for ``user``."""
    import json

    main, _, sub = resource.partition("/")
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{user.split(':')[2]}"],
                     "resourceAttributes": {"namespace": namespace, "verb": verb, "group": "pipelines.kubeflow.org",
                                            "version": "v1beta1", "resource": main, "subresource": sub}}}
    return bool(json.loads(cp.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(body)).stdout)["status"].get("allowed"))


def test_multi_user_rbac_lets_the_monitor_use_kfp_in_the_profile_and_the_deployer_patch(multi_user_cluster) -> None:
    cp, applied = multi_user_cluster
    assert ("rbac.authorization.k8s.io/v1", "Role") in applied.kinds("applied")
    monitor = f"system:serviceaccount:{MULTI_USER_NAMESPACE}:flywheel-monitor"
    # exactly what KFP's API server asks (a SubjectAccessReview, group pipelines.kubeflow.org, v1beta1)
    for verb, resource in [("create", "runs"), ("get", "runs"), ("create", "experiments"), ("list", "experiments"),
                           ("create", "pipelines"), ("get", "pipelines"), ("create", "pipelines/versions")]:
        assert kfp_access(cp, monitor, PROFILE, verb, resource), f"{verb} {resource}"
    assert not kfp_access(cp, monitor, PROFILE, "delete", "runs")
    assert not kfp_access(cp, monitor, "other-profile", "create", "runs")
    assert not kfp_access(cp, f"system:serviceaccount:{RELEASE_NAMESPACE}:flywheel-monitor", PROFILE, "create", "runs")
    editor = f"--as=system:serviceaccount:{PROFILE}:default-editor"
    assert can_i(cp, "patch", f"deployments/{SERVING}", "-n", MULTI_USER_NAMESPACE, editor)
    assert not can_i(cp, "patch", f"deployments/{SERVING}", "-n", RELEASE_NAMESPACE, editor)
    data = cp.kubectl("-n", PROFILE, "get", "configmap", "flywheel-config", "-o", "jsonpath={.data}").stdout
    assert f'"FLYWHEEL_SERVING_NAMESPACE":"{MULTI_USER_NAMESPACE}"' in data and f'"FLYWHEEL_KFP_NAMESPACE":"{PROFILE}"' in data


def test_a_token_for_the_kfp_audience_authenticates_the_monitor_only_for_that_audience(multi_user_cluster) -> None:
    """What KFP's TokenReview authenticator does with the projected token the chart mounts."""
    import json

    cp, _ = multi_user_cluster
    token = token_for(cp, MULTI_USER_NAMESPACE, "flywheel-monitor", audience="pipelines.kubeflow.org")

    def review(audience: str) -> dict:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [audience]}}
        out = cp.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(body)).stdout
        return json.loads(out)["status"]

    ok = review("pipelines.kubeflow.org")
    assert ok["authenticated"] and ok["user"]["username"] == f"system:serviceaccount:{MULTI_USER_NAMESPACE}:flywheel-monitor"
    assert not review("https://kubernetes.default.svc").get("authenticated"), "the KFP token is no Kubernetes API token"


def test_the_steps_configmap_points_the_deploy_step_at_the_release(multi_user_cluster, two_versions, tmp_path,
                                                                   monkeypatch) -> None:
    """Defect 4: the deploy step reads the serving names from flywheel-config in the run's namespace.

    Without that ConfigMap it would fall back to flywheel/flywheel-serving, which the profile's
    runner may not touch; with it, it patches the multi-user release's Deployment.
    """
    import json

    import yaml
    from kubernetes import client, config

    from pipelines.compile import compile_pipeline
    from pipelines.training import ClusterOptions

    cp, _ = multi_user_cluster
    fixture_settings, _ = two_versions
    ir = list(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", cluster=ClusterOptions()).read_text()))
    [ref] = ir[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-deploy"]["configMapAsEnv"]
    data = json.loads(cp.kubectl("-n", PROFILE, "get", "configmap", ref["configMapName"], "-o", "jsonpath={.data}").stdout)
    for pair in ref["keyToEnv"]:  # what KFP's driver puts into the step's environment (an absent key: unset)
        if pair["configMapKey"] in data:
            monkeypatch.setenv(pair["envVar"], data[pair["configMapKey"]])
    settings = load_settings(store=fixture_settings.store, model="wine", spill_dir=fixture_settings.spill_dir)
    assert (settings.serving_namespace, settings.serving_deployment) == (MULTI_USER_NAMESPACE, SERVING)

    editor = cp.kubeconfig(token_for(cp, PROFILE, "default-editor"), name="default-editor")
    result = deploy(settings, mode="cluster", kubeconfig=str(editor), timeout_seconds=2, poll_seconds=0.2)

    assert result.rolled_back and "timed out" in result.reason  # no kubelet: the timeout path, after a real patch
    apps = client.AppsV1Api(config.new_client_from_config(config_file=str(cp.kubeconfig())))
    pinned = [r for r in apps.list_namespaced_replica_set(MULTI_USER_NAMESPACE).items
              if _served(r.spec.template) == "v2"]
    assert pinned, "the patch reached the multi-user release's Deployment"
