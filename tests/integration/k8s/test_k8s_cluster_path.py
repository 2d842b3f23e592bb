"""Chart and kustomize defects that would stop the cluster path (issue 13: defects 4, 5 and 6),
checked on what the real Helm engine and `kubectl kustomize` render."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
from k8s_support import (
    KUSTOMIZATIONS,
    NAMESPACE,
    REPO,
    find,
    helm_render,
    kinds,
    kustomize,
    manifests,
    unusable_grants,
)

from components.settings import Settings
from pipelines.training import ClusterOptions

MULTI_USER = {"config": {"kfp": {"mode": "multi-user", "namespace": "team-a"}}}
ALL_BUILDS = [*KUSTOMIZATIONS, "helm-default", "helm-production"]


# --- kustomize sets no replicas an HPA owns ---------------------------------------------------

@pytest.mark.parametrize("build", ALL_BUILDS)
def test_no_replica_count_where_an_hpa_owns_it(builds, build):
    docs = builds[build]
    for hpa in kinds(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = find(docs, ref["kind"], ref["name"])
        assert "replicas" not in target["spec"], f"{build}: {ref['kind']}/{ref['name']} sets replicas while HPA {hpa['metadata']['name']} owns the count"


# --- NetworkPolicy: the in-namespace MinIO is reachable ------------------------------------------

def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "the evaluator knows matchLabels only"
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_matches(peer: dict[str, Any], policy_ns: str, pod_ns: str, pod_labels: dict[str, str]) -> bool:
    ns_labels = {"kubernetes.io/metadata.name": pod_ns}
    if "ipBlock" in peer:
        return False  # pod-to-pod traffic inside the cluster is matched by selectors
    ns_ok = _selects(peer["namespaceSelector"], ns_labels) if "namespaceSelector" in peer else pod_ns == policy_ns
    pod_ok = _selects(peer["podSelector"], pod_labels) if "podSelector" in peer else True
    return ns_ok and pod_ok


def _allows(policies: list[dict], direction: str, ns: str, labels: dict[str, str], peer_ns: str,
            peer_labels: dict[str, str], port: int) -> bool:
    """NetworkPolicy semantics for one pod and one direction: isolated pods need a rule that admits the peer and port."""
    key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [p for p in policies if p["metadata"].get("namespace", NAMESPACE) == ns
                 and direction in p["spec"].get("policyTypes", ["Ingress"]) and _selects(p["spec"]["podSelector"], labels)]
    if not selecting:
        return True
    for p in selecting:
        for rule in p["spec"].get(key, []):
            ports_ok = not rule.get("ports") or any(r.get("port") == port for r in rule["ports"])
            peers_ok = peers not in rule or any(_peer_matches(x, ns, peer_ns, peer_labels) for x in rule[peers])
            if ports_ok and peers_ok:
                return True
    return False


def _connects(policies, src: tuple[str, dict], dst: tuple[str, dict], port: int) -> bool:
    return (_allows(policies, "Egress", src[0], src[1], dst[0], dst[1], port)
            and _allows(policies, "Ingress", dst[0], dst[1], src[0], src[1], port))


def _pod_labels(doc: dict) -> dict[str, str]:
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    return spec["template"]["metadata"]["labels"]


@pytest.fixture(scope="module")
def minio() -> tuple[str, dict[str, str]]:
    """The kind overlay's MinIO pod, as its Deployment labels it."""
    docs = kustomize(KUSTOMIZATIONS["kustomize-kind"].parent / "kind" / "minio")
    return NAMESPACE, _pod_labels(find(docs, "Deployment", "minio"))


@pytest.mark.parametrize(("source", "values"), [("helm", None), ("helm", MULTI_USER), ("kustomize-kind", None)])
def test_the_in_namespace_object_store_takes_traffic_from_flywheel_and_the_steps(minio, builds, source, values):
    docs = builds[source] if source != "helm" else manifests(helm_render(values))
    # the chart's (or base's) policies alone: the MinIO overlay's own objects are not counted on
    policies = [p for p in kinds(docs, "NetworkPolicy") if not p["metadata"]["name"].startswith("minio")]
    serving = (NAMESPACE, _pod_labels(find(docs, "Deployment", "flywheel-serving")))
    monitor = (NAMESPACE, _pod_labels(find(docs, "CronJob", "flywheel-monitor")))
    steps_ns = (values or {}).get("config", {}).get("kfp", {}).get("namespace", "kubeflow")
    step = (steps_ns, {"pipelines.kubeflow.org/v2_component": "true"})
    for who in (serving, monitor, step):
        assert _connects(policies, who, minio, 9000), f"{source}: {who} cannot reach MinIO on 9000"
    assert not _connects(policies, ("elsewhere", {}), minio, 9000), "other namespaces stay out"
    assert not _connects(policies, serving, minio, 9001), "only the S3 port"


def test_production_has_no_object_store_policy(builds):
    for build in ("helm-production", "kustomize-production"):
        assert "flywheel-object-store" not in {p["metadata"]["name"] for p in kinds(builds[build], "NetworkPolicy")}


# --- the step namespace gets flywheel-config ---------------------------------------------------

@pytest.mark.parametrize(("values", "steps_ns"), [(None, "kubeflow"), (MULTI_USER, "team-a")])
def test_flywheel_config_is_where_the_steps_run(values, steps_ns):
    docs = manifests(helm_render(values))
    configs = {d["metadata"]["namespace"]: d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"] == "flywheel-config"}
    assert set(configs) == {NAMESPACE, steps_ns}
    steps = configs[steps_ns]["data"]
    # the compiled pipeline reads these keys from this ConfigMap name, in the run's namespace
    assert ClusterOptions().config_map == "flywheel-config"
    assert steps["FLYWHEEL_SERVING_NAMESPACE"] == NAMESPACE and steps["FLYWHEEL_SERVING_DEPLOYMENT"] == "flywheel-serving"
    assert steps == configs[NAMESPACE]["data"]


def test_one_configmap_when_the_steps_run_in_the_release_namespace():
    docs = manifests(helm_render({"config": {"kfp": {"namespace": NAMESPACE}}}))
    assert len([d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"] == "flywheel-config"]) == 1


# --- standalone and multi-user KFP, chosen by values --------------------------------------------

def _monitor_pod(docs):
    return find(docs, "CronJob", "flywheel-monitor")["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_multi_user_mounts_a_projected_kfp_token_and_grants_the_profile_namespace():
    docs = manifests(helm_render(MULTI_USER))
    pod = _monitor_pod(docs)
    assert pod["automountServiceAccountToken"] is False, "no Kubernetes API token, only the KFP one"
    volume = next(v for v in pod["volumes"] if v["name"] == "kfp-token")
    [source] = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "kfp-token")
    default_path = Settings.model_fields["kfp_token_path"].default
    assert f"{mount['mountPath']}/{source['serviceAccountToken']['path']}" == default_path and mount["readOnly"]
    data = next(d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"] == "flywheel-config"
                and d["metadata"]["namespace"] == NAMESPACE)["data"]
    assert data["FLYWHEEL_KFP_NAMESPACE"] == "team-a"
    role = next(d for d in kinds(docs, "Role") if d["metadata"]["name"] == "flywheel-kfp-client")
    assert role["metadata"]["namespace"] == "team-a"
    [rule] = role["rules"]
    assert rule["apiGroups"] == ["pipelines.kubeflow.org"] and set(rule["verbs"]) == {"create", "get", "list"}
    assert {"pipelines", "experiments", "runs"} <= set(rule["resources"])
    binding = next(d for d in kinds(docs, "RoleBinding") if d["metadata"]["name"] == "flywheel-kfp-client")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "flywheel-monitor", "namespace": NAMESPACE}]
    assert unusable_grants(docs) == [], "the KFP Role is used with the projected token of KFP's audience"
    deployer = find(docs, "RoleBinding", "flywheel-deployer")
    assert deployer["subjects"] == [{"kind": "ServiceAccount", "name": "default-editor", "namespace": "team-a"}]


def test_standalone_has_no_kfp_token_namespace_or_profile_role(helm_default):
    docs = manifests(helm_default)
    assert "kfp-token" not in {v["name"] for v in _monitor_pod(docs)["volumes"]}
    assert all("FLYWHEEL_KFP_NAMESPACE" not in d["data"] for d in kinds(docs, "ConfigMap") if d["metadata"]["name"] == "flywheel-config")
    assert "flywheel-kfp-client" not in {d["metadata"]["name"] for d in kinds(docs, "Role")}
    assert find(docs, "RoleBinding", "flywheel-deployer")["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]


def test_every_flywheel_key_of_multi_user_config_is_a_setting():
    docs = manifests(helm_render(MULTI_USER))
    for cm in (d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"] == "flywheel-config"):
        unknown = [k for k in cm["data"] if k.startswith("FLYWHEEL_") and k[len("FLYWHEEL_"):].lower() not in Settings.model_fields]
        assert not unknown


def test_the_kfp_mode_is_validated():
    with pytest.raises(helm.HelmValuesError, match="/config/kfp/mode"):
        helm_render({"config": {"kfp": {"mode": "multiuser"}}})


def test_the_docs_state_the_minimum_kfp_version():
    docs = (REPO / "docs" / "cluster.md").read_text()
    assert "2.14" in docs and "2.17" in docs and "2.5.0" not in docs
