"""The Helm chart through the real Helm engine (helm-python-sdk): lint, schema, CRD objects,
dashboard and NOTES."""

from __future__ import annotations

import json

import helm_python as helm
import pytest
import yaml
from k8s_support import (
    CHART,
    HELM_VALUE_SETS,
    NAMESPACE,
    find,
    helm_render,
    kinds,
    manifests,
    merge,
    pod_specs,
    restricted_violations,
    values_file,
)

SERVING_METRICS = (
    "flywheel_request_duration_seconds", "flywheel_requests_total", "flywheel_batch_size",
    "flywheel_model_info", "flywheel_predictions_total", "flywheel_prediction_log_records_total",
)
LOOP_METRICS = ("flywheel_drift_share", "flywheel_retrain_decisions_total", "flywheel_retrain_failures_total")


@pytest.mark.parametrize("kube_version", ["v1.30.0", "v1.37.0"])
@pytest.mark.parametrize("values_name", list(HELM_VALUE_SETS))
def test_lint_strict_is_clean(values_name, kube_version):
    report = helm.lint(str(CHART), values_file(HELM_VALUE_SETS[values_name]), strict=True,
                       namespace=NAMESPACE, kube_version=kube_version)
    assert report["total_charts_linted"] == 1
    assert report["errors"] == [] and report["messages"] == [], report


@pytest.mark.parametrize(
    ("bad", "field", "why"),
    [
        ({"serving": {"replicas": -1}}, "/serving/replicas", "minimum"),
        ({"serving": {"replicas": "two"}}, "/serving/replicas", "want integer"),
        ({"serving": {"autoscaling": {"minReplicas": 0}}}, "/serving/autoscaling/minReplicas", "minimum"),
        ({"monitor": {"suspend": "no"}}, "/monitor/suspend", "want boolean"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "Always"),
        ({"replicaCount": 3}, "additional properties 'replicaCount'", "not allowed"),
        ({"serving": {"resources": {"limits": {"gpu": 1}}}}, "/serving/resources/limits", "'gpu' not allowed"),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "/metrics/serviceMonitor", "'enable' not allowed"),
        ({"securityContext": {"runAsUser": 0}}, "/securityContext/runAsUser", "minimum"),
        ({"config": {"store": "gs://bucket"}}, "/config/store", "pattern"),
    ],
)
def test_schema_rejects_bad_values_naming_the_field(bad, field, why):
    report = helm.lint(str(CHART), bad, strict=True, namespace=NAMESPACE)
    errors = "\n".join(report["errors"])
    assert field in errors and why in errors, errors
    with pytest.raises(helm.HelmValuesError) as exc:
        helm_render(bad)
    assert field in str(exc.value)


def test_schema_forbids_unknown_keys_in_every_object():
    with helm.Chart.load(str(CHART)) as chart:
        schema = chart.schema
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    open_objects = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(path)
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(schema, "")
    assert not open_objects, open_objects


def test_every_default_value_is_described_by_the_schema():
    """values.yaml is the list of knobs: it must validate, and so must the production file."""
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(chart.values)
        chart.validate_schema(values_file(HELM_VALUE_SETS["helm-production"]))


def test_crd_objects_are_off_by_default_and_well_formed_in_production(helm_default, helm_production):
    default_kinds = {d["kind"] for d in manifests(helm_default)}
    assert not default_kinds & {"ServiceMonitor", "PrometheusRule"}  # installs on clusters without the operator
    docs = manifests(helm_production)

    sm = find(docs, "ServiceMonitor", "flywheel-serving")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]
    svc = find(docs, "Service", "flywheel-serving")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["metadata"]["labels"]["release"] == "prometheus"

    rule = find(docs, "PrometheusRule", "flywheel")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) >= {
        "FlywheelServingUnavailable", "FlywheelServingAvailabilityBurn", "FlywheelServingHighErrorRate",
        "FlywheelServingHighLatencyP99", "FlywheelServingNoTraffic", "FlywheelDataDrift", "FlywheelRetrainFailed",
        "FlywheelMonitorJobFailed", "FlywheelMonitorStale",
    }
    for r in alerts.values():  # the expressions themselves are checked by promtool in tests/integration/observability
        assert r["labels"]["severity"] in {"critical", "warning", "info"}
        assert r["annotations"]["summary"]
    # Prometheus templating survives Helm templating.
    assert "{{ $labels.model }}" in alerts["FlywheelDataDrift"]["annotations"]["summary"]


def test_alert_thresholds_follow_values():
    docs = manifests(helm_render({"metrics": {"prometheusRule": {"enabled": True, "p99LatencySeconds": 0.25}},
                                  "config": {"monitoring": {"driftShareThreshold": 0.5}}}))
    alerts = {r["alert"]: r for g in find(docs, "PrometheusRule", "flywheel")["spec"]["groups"] for r in g["rules"]}
    assert "> 0.25" in alerts["FlywheelServingHighLatencyP99"]["expr"]
    assert "0.5" in alerts["FlywheelDataDrift"]["annotations"]["description"]
    assert find(docs, "ConfigMap", "flywheel-config")["data"]["FLYWHEEL_DRIFT_SHARE_THRESHOLD"] == "0.5"


def test_grafana_dashboard_covers_serving_and_drift(helm_production):
    cm = find(manifests(helm_production), "ConfigMap", "flywheel-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(cm["data"]["flywheel.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    missing = [m for m in SERVING_METRICS + LOOP_METRICS if m not in exprs]
    assert not missing, f"dashboard has no panel for {missing}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_notes_tell_how_to_reach_the_service(helm_default):
    notes = helm_default["flywheel/templates/NOTES.txt"]
    assert "kubectl -n flywheel port-forward svc/flywheel-serving 3000:3000" in notes
    assert "curl -s -X POST localhost:3000/predict" in notes and "\"records\"" in notes
    assert "create job --from=cronjob/flywheel-monitor" in notes
    assert "Evidently UI" not in notes


def test_evidently_ui_runs_the_documented_command(helm_production):
    docs = manifests(helm_production)
    dep = find(docs, "Deployment", "flywheel-evidently-ui")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["evidently", "ui", "--workspace", "/data/workspace", "--host", "0.0.0.0", "--port", "8000"]
    assert find(docs, "Service", "flywheel-evidently-ui")["spec"]["ports"][0]["port"] == 8000
    # The workspace keeps every past report on a claim: the monitor writes where the UI reads.
    claim = find(docs, "PersistentVolumeClaim", "flywheel-evidently")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    ui_ws = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "workspace")
    assert ui_ws == {"name": "workspace", "persistentVolumeClaim": {"claimName": "flywheel-evidently"}}
    monitor_pod = find(docs, "CronJob", "flywheel-monitor")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    ws = next(v for v in monitor_pod["volumes"] if v["name"] == "evidently-workspace")
    assert ws == {"name": "evidently-workspace", "persistentVolumeClaim": {"claimName": "flywheel-evidently"}}
    assert find(docs, "ConfigMap", "flywheel-config")["data"]["FLYWHEEL_EVIDENTLY_WORKSPACE"] == "/data/workspace"


def test_evidently_workspace_is_never_an_empty_dir():
    """Without the UI the monitor keeps no workspace; with it, an existing claim can be named."""
    docs = manifests(helm_render(None))
    monitor_pod = find(docs, "CronJob", "flywheel-monitor")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "evidently-workspace" not in {v["name"] for v in monitor_pod["volumes"]}
    assert find(docs, "ConfigMap", "flywheel-config")["data"]["FLYWHEEL_EVIDENTLY_WORKSPACE"] == ""
    docs = manifests(helm_render({"evidentlyUI": {"enabled": True, "persistence": {"existingClaim": "reports"}}}))
    assert not kinds(docs, "PersistentVolumeClaim")
    workspaces = [v for _, spec in pod_specs(docs) for v in spec["volumes"] if v["name"] in ("workspace", "evidently-workspace")]
    assert len(workspaces) == 2, workspaces  # the monitor's and the UI's
    assert all(v == {"name": v["name"], "persistentVolumeClaim": {"claimName": "reports"}} for v in workspaces), workspaces


def test_pushgateway_is_optional_and_the_monitor_pushes_to_it():
    default = manifests(helm_render(None))
    assert "FLYWHEEL_PUSHGATEWAY" not in find(default, "ConfigMap", "flywheel-config")["data"]
    assert not [d for d in default if "pushgateway" in d["metadata"]["name"]]

    docs = manifests(helm_render({"pushgateway": {"enabled": True}, "metrics": {"serviceMonitor": {"enabled": True}}}))
    dep = find(docs, "Deployment", "flywheel-pushgateway")
    assert restricted_violations(dep["spec"]["template"]["spec"]) == []
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "quay.io/prometheus/pushgateway:v1.11.0"
    svc = find(docs, "Service", "flywheel-pushgateway")
    url = f"http://flywheel-pushgateway.{NAMESPACE}.svc:{svc['spec']['ports'][0]['port']}"
    assert find(docs, "ConfigMap", "flywheel-config")["data"]["FLYWHEEL_PUSHGATEWAY"] == url
    sm = find(docs, "ServiceMonitor", "flywheel-pushgateway")
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True  # pushed job/model labels win
    egress = find(docs, "NetworkPolicy", "flywheel-monitor")["spec"]["egress"]
    assert {"protocol": "TCP", "port": 9091} in [p for rule in egress for p in rule.get("ports", [])]
    assert find(docs, "NetworkPolicy", "flywheel-pushgateway")["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 9091}]}]

    # pointing at an existing one deploys nothing and wins over the chart's own
    existing = "http://prometheus-pushgateway.monitoring.svc:9091"
    docs = manifests(helm_render({"pushgateway": {"enabled": False}, "config": {"monitoring": {"pushgateway": existing}}}))
    assert find(docs, "ConfigMap", "flywheel-config")["data"]["FLYWHEEL_PUSHGATEWAY"] == existing
    assert not [d for d in docs if d["metadata"]["name"] == "flywheel-pushgateway"]


def test_knobs_reach_the_manifests():
    values = merge(None, {
        "image": {"registry": "registry.example.com/ml", "tag": "1.2.3", "pullPolicy": "IfNotPresent"},
        "serving": {"autoscaling": {"enabled": False}, "replicas": 4, "modelVersion": "v7",
                    "image": {"name": "flywheel-serving", "digest": "sha256:" + "a" * 64}},
        "monitor": {"schedule": "*/15 * * * *", "suspend": True},
        "rbac": {"deployer": {"serviceAccount": "runner"}},
        "config": {"kfp": {"namespace": "pipelines"}},
        "networkPolicy": {"enabled": False},
    })
    docs = manifests(helm_render(values))
    dep = find(docs, "Deployment", "flywheel-serving")
    assert dep["spec"]["replicas"] == 4
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "registry.example.com/ml/flywheel-serving@sha256:" + "a" * 64
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert dep["spec"]["template"]["metadata"]["annotations"]["flywheel.io/model-version"] == "v7"
    cj = find(docs, "CronJob", "flywheel-monitor")
    assert cj["spec"]["schedule"] == "*/15 * * * *" and cj["spec"]["suspend"] is True
    assert cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/ml/flywheel-monitor:1.2.3"
    assert find(docs, "RoleBinding", "flywheel-deployer")["subjects"] == [
        {"kind": "ServiceAccount", "name": "runner", "namespace": "pipelines"}]
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"]


def test_values_yaml_is_commented():
    text = (CHART / "values.yaml").read_text()
    assert yaml.safe_load(text)["image"]["registry"] == "ghcr.io/flywheel"
    assert text.count("#") >= 20
