"""Every manifest we ship: schema-valid, Pod Security "restricted", least-privilege RBAC,
and wired to the contract the code relies on (names, env vars, ports, probes)."""

from __future__ import annotations

import kubernetes_validate
import pytest
from k8s_support import (
    CRD_KINDS,
    HELM_VALUE_SETS,
    KUBE_VERSIONS,
    KUSTOMIZATIONS,
    env_map,
    find,
    kinds,
    pod_specs,
    restricted_violations,
    unusable_grants,
)

from components.deploy import ANNOTATION, VERSION_FIELD

ALL_BUILDS = [*KUSTOMIZATIONS, *HELM_VALUE_SETS]


def serve_binding(args: list[str]) -> tuple[str, int]:
    """(host, port) the real `flywheel serve` CLI binds when given the container's args."""
    from unittest import mock

    from typer.testing import CliRunner

    from pipelines.cli import app

    with mock.patch("services.serving.launch.serve", return_value=0) as serve:
        result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 0, result.output
    _settings, port, _version, host = serve.call_args.args
    return host, port

# Pod-creating workloads each build must contain (so a dropped workload fails, not passes).
EXPECTED_WORKLOADS = {
    "kustomize-base": {"Deployment/flywheel-serving", "CronJob/flywheel-monitor"},
    "kustomize-production": {"Deployment/flywheel-serving", "CronJob/flywheel-monitor"},
    "kustomize-kind": {"Deployment/flywheel-serving", "CronJob/flywheel-monitor", "Deployment/minio", "Job/minio-make-bucket"},
    "helm-default": {"Deployment/flywheel-serving", "CronJob/flywheel-monitor"},
    "helm-production": {"Deployment/flywheel-serving", "CronJob/flywheel-monitor", "Deployment/flywheel-evidently-ui"},
}

CONFIG_KEYS = {
    "FLYWHEEL_STORE", "FLYWHEEL_MODEL", "FLYWHEEL_RUNNER", "AWS_DEFAULT_REGION", "FLYWHEEL_KFP_HOST",
    "FLYWHEEL_KFP_EXPERIMENT", "FLYWHEEL_KFP_PIPELINE", "FLYWHEEL_DRIFT_SHARE_THRESHOLD",
    "FLYWHEEL_QUALITY_DROP_THRESHOLD", "FLYWHEEL_MIN_ROWS", "FLYWHEEL_COOLDOWN_MINUTES",
    "FLYWHEEL_EVIDENTLY_WORKSPACE", "FLYWHEEL_SERVING_DEPLOYMENT", "FLYWHEEL_SERVING_NAMESPACE",
    "FLYWHEEL_INCLUDE_FEEDBACK",
}


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("build", ALL_BUILDS)
def test_builtin_kinds_validate_strictly(builds, build, version):
    docs = builds[build]
    assert docs, f"{build} produced no manifests"
    failures = []
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            # Documented limitation: kubernetes-validate ships no CRD schemas; the
            # structure of these objects is asserted in test_k8s_helm.py instead.
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, version, strict=True)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("build", ALL_BUILDS)
def test_every_pod_meets_restricted_profile(builds, build):
    specs = dict(pod_specs(builds[build]))
    assert EXPECTED_WORKLOADS[build] <= set(specs), f"missing workloads in {build}: {EXPECTED_WORKLOADS[build] - set(specs)}"
    problems = [f"{ref}: {v}" for ref, spec in specs.items() for v in restricted_violations(spec)]
    assert not problems, "\n".join(problems)


def test_restricted_check_catches_a_violating_pod():
    bad = {"containers": [{"name": "c", "image": "x", "securityContext": {"allowPrivilegeEscalation": True}}],
           "volumes": [{"name": "h", "hostPath": {"path": "/"}}], "hostNetwork": True}
    found = "\n".join(restricted_violations(bad))
    for expected in ("hostNetwork", "runAsNonRoot", "allowPrivilegeEscalation", "drop ALL", "seccompProfile",
                     "readOnlyRootFilesystem", "no cpu limits", "/tmp", "hostPath", "automountServiceAccountToken"):
        assert expected in found


@pytest.mark.parametrize("build", ["kustomize-base", "kustomize-kind", "kustomize-production"])
def test_namespace_enforces_restricted(builds, build):
    ns = find(builds[build], "Namespace", "flywheel")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(d["metadata"].get("namespace") == "flywheel" for d in builds[build] if d["kind"] != "Namespace")


@pytest.mark.parametrize("build", ALL_BUILDS)
def test_rbac_is_least_privilege(builds, build):
    docs = builds[build]
    assert not kinds(docs, "ClusterRole") and not kinds(docs, "ClusterRoleBinding")
    roles = {r["metadata"]["name"]: r for r in kinds(docs, "Role")}
    assert set(roles) == {"flywheel-deployer"}

    (deploy_rule,) = roles["flywheel-deployer"]["rules"]
    assert deploy_rule["apiGroups"] == ["apps"]
    assert deploy_rule["resources"] == ["deployments"]
    assert deploy_rule["resourceNames"] == ["flywheel-serving"]
    assert sorted(deploy_rule["verbs"]) == ["get", "patch", "watch"]

    bindings = {b["metadata"]["name"]: b for b in kinds(docs, "RoleBinding")}
    assert set(bindings) == {"flywheel-deployer"}
    assert bindings["flywheel-deployer"]["roleRef"]["name"] == "flywheel-deployer"
    assert bindings["flywheel-deployer"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]
    # Neither ServiceAccount of the release mounts a token, so neither is bound to anything.
    for sa in kinds(docs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    assert unusable_grants(docs) == []


def test_a_grant_to_an_account_whose_pods_carry_no_token_is_found(builds):
    """The check above is not vacuous: the Role the monitor once had (its pods mount no token) is reported."""
    docs = [*builds["helm-default"],
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "flywheel-monitor"},
             "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "flywheel-monitor"},
             "roleRef": {"kind": "Role", "name": "flywheel-monitor"},
             "subjects": [{"kind": "ServiceAccount", "name": "flywheel-monitor", "namespace": "flywheel"}]}]
    assert unusable_grants(docs) == ["Role flywheel-monitor grants ['get'] on ['configmaps'] to ServiceAccount "
                                     "flywheel/flywheel-monitor, whose pods carry no token for the Kubernetes API"]


@pytest.mark.parametrize("build", ALL_BUILDS)
def test_serving_matches_the_code_contract(builds, build):
    docs = builds[build]
    dep = find(docs, "Deployment", "flywheel-serving")
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "flywheel-serving"
    (c,) = pod["containers"]
    assert c["name"] == "serving"  # the deploy step patches this container by name
    assert c["image"].split("/")[-1].startswith("flywheel-serving:")
    # All interfaces: a server on 127.0.0.1 never passes a probe on the pod IP (defect 1).
    assert c["args"] == ["--host", "0.0.0.0", "--port", "3000"]
    assert serve_binding(c["args"]) == ("0.0.0.0", 3000)
    assert {"name": "http", "containerPort": 3000, "protocol": "TCP"} in c["ports"]
    assert c["startupProbe"]["httpGet"]["path"] == c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # One timeout for every probe (Kubernetes' default is 1 s): the startup probe once had it while the others had 3 s.
    assert {c[p].get("timeoutSeconds", 1) for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {3}
    env = env_map(c)
    # The pod's version annotation is what serves; no manifest sets it, so re-applying one never
    # undoes the deploy step's rollout (the apiserver tier re-applies the chart over one).
    assert env["MODEL_VERSION"] == {"name": "MODEL_VERSION", "valueFrom": {"fieldRef": {"fieldPath": VERSION_FIELD}}}
    assert ANNOTATION not in (dep["spec"]["template"]["metadata"].get("annotations") or {})
    assert env["BENTOML_HOME"]["value"].startswith("/tmp/")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert env["FLYWHEEL_SPILL_DIR"]["value"] in mounts
    assert c["envFrom"] == [{"configMapRef": {"name": "flywheel-config"}}]

    svc = find(docs, "Service", "flywheel-serving")
    assert svc["spec"]["ports"][0]["port"] == 3000
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()

    hpa = find(docs, "HorizontalPodAutoscaler", "flywheel-serving")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "flywheel-serving"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = find(docs, "PodDisruptionBudget", "flywheel-serving")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("build", ALL_BUILDS)
def test_credentials_only_from_the_secret(builds, build):
    docs = builds[build]
    for ref, spec in pod_specs(docs):
        for c in spec["containers"]:
            for e in c.get("env") or []:
                if e["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                    assert "value" not in e, f"{ref}: {e['name']} has a literal value"
                    assert e["valueFrom"]["secretKeyRef"] == {"name": "flywheel-s3", "key": e["name"]}
    if ref_names := [f"{d['kind']}/{d['metadata']['name']}" for d in kinds(docs, "Secret")]:
        assert build == "kustomize-kind" and ref_names == ["Secret/flywheel-s3"], f"{build} ships {ref_names}"
    serving = find(docs, "Deployment", "flywheel-serving")["spec"]["template"]["spec"]["containers"][0]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env_map(serving))


@pytest.mark.parametrize("build", ALL_BUILDS)
def test_monitor_cronjob_is_bounded(builds, build):
    cj = find(builds[build], "CronJob", "flywheel-monitor")
    spec = cj["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0 and job["backoffLimit"] >= 0
    pod = job["template"]["spec"]
    # A pass whose retrain failed exits with the monitor's own code: the Job fails without a second pod.
    from services.monitoring.monitor import EXIT_RETRAIN_FAILED

    assert job["podFailurePolicy"]["rules"] == [{"action": "FailJob", "onExitCodes": {
        "containerName": pod["containers"][0]["name"], "operator": "In", "values": [EXIT_RETRAIN_FAILED]}}]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "flywheel-monitor"
    (c,) = pod["containers"]
    assert c["command"] == ["flywheel", "monitor"]
    assert c["image"].split("/")[-1].startswith("flywheel-monitor:")
    # The Evidently workspace is mounted exactly when the settings name one (the UI's claim).
    workspace = find(builds[build], "ConfigMap", "flywheel-config")["data"]["FLYWHEEL_EVIDENTLY_WORKSPACE"]
    assert workspace in ("", "/data/workspace")
    assert ("/data/workspace" in {m["mountPath"] for m in c["volumeMounts"]}) == bool(workspace)


@pytest.mark.parametrize("build", ALL_BUILDS)
def test_configmap_carries_the_settings(builds, build):
    data = find(builds[build], "ConfigMap", "flywheel-config")["data"]
    assert set(data) >= CONFIG_KEYS, f"missing {CONFIG_KEYS - set(data)}"
    assert data["FLYWHEEL_RUNNER"] == "kfp"
    assert data["FLYWHEEL_STORE"].startswith("s3://")
    assert data["FLYWHEEL_SERVING_DEPLOYMENT"] == "flywheel-serving"
    assert data["FLYWHEEL_EVIDENTLY_WORKSPACE"] in ("", "/data/workspace")  # empty: no Evidently UI, no workspace
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(data)
    if build.endswith("production"):
        assert "AWS_ENDPOINT_URL" not in data  # real S3
    else:
        assert data["AWS_ENDPOINT_URL"] == "http://minio.flywheel.svc:9000"
    float(data["FLYWHEEL_DRIFT_SHARE_THRESHOLD"]), int(data["FLYWHEEL_MIN_ROWS"])
    # The CronJob runs `flywheel monitor` with no flags: without labelled production rows its
    # retrain would read only the champion's own data, so drift could never retrain.
    assert data["FLYWHEEL_INCLUDE_FEEDBACK"] == "true"


@pytest.mark.parametrize("build", ALL_BUILDS)
def test_network_policies_default_deny(builds, build):
    policies = {p["metadata"]["name"]: p for p in kinds(builds[build], "NetworkPolicy")}
    deny = policies["flywheel-default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    serving = policies["flywheel-serving"]["spec"]
    assert [p["port"] for r in serving["ingress"] for p in r["ports"]] == [3000]


def test_kind_minio_is_single_replica_with_dev_secret(builds):
    docs = builds["kustomize-kind"]
    minio = find(docs, "Deployment", "minio")
    assert minio["spec"]["replicas"] == 1
    assert find(docs, "Service", "minio")["spec"]["ports"][0]["port"] == 9000
    secret = find(docs, "Secret", "flywheel-s3")
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    # kind loads images instead of pulling them.
    serving = find(docs, "Deployment", "flywheel-serving")["spec"]["template"]["spec"]["containers"][0]
    assert serving["imagePullPolicy"] == "IfNotPresent"


def test_helm_and_kustomize_describe_the_same_resources(builds):
    """The chart renders what the kustomize base declares (the Namespace excepted: Helm
    installs into an existing one), plus the dashboard ConfigMap."""
    def ids(docs):
        return {(d["kind"], d["metadata"]["name"]) for d in docs}

    base = ids(builds["kustomize-base"]) - {("Namespace", "flywheel")}
    chart = ids(builds["helm-default"]) - {("ConfigMap", "flywheel-dashboard")}
    assert base == chart


@pytest.mark.parametrize("build", ALL_BUILDS)
def test_every_flywheel_variable_is_a_setting(builds, build):
    """A FLYWHEEL_* key the settings object does not know would be silently ignored."""
    from components.settings import Settings

    data = find(builds[build], "ConfigMap", "flywheel-config")["data"]
    unknown = [k for k in data if k.startswith("FLYWHEEL_") and k[len("FLYWHEEL_"):].lower() not in Settings.model_fields]
    assert not unknown, unknown
