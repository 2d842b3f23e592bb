"""The chart's alerts and dashboard, checked by Prometheus's own tools.

Given the PrometheusRule rendered by the real Helm engine, ``promtool check rules`` accepts
it, and ``promtool test rules`` runs, for every alert, input series that must fire it and
series that must not. Every dashboard query parses (each is checked as a recording rule).
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.observability.promql import (
    alerts,
    binary,
    check_rules,
    dashboard,
    dashboard_queries,
    metric_names,
    rule_groups,
)

NS = 'namespace="flywheel"'
MON = 'job="flywheel-monitor", model="demo"'
REQ = f'flywheel_requests_total{{{NS}, api="predict"'
LAT = f'flywheel_request_duration_seconds_bucket{{{NS}, api="predict", status="200"'


def series(name: str, values: str) -> dict[str, str]:
    return {"series": name, "values": values}


# alert -> (series that fire it, eval time, labels of the alert), (series that must not, eval time)
CASES: dict[str, tuple[tuple[list, str, dict[str, str]], tuple[list, str]]] = {
    "FlywheelServingUnavailable": (
        ([series(f'kube_deployment_status_replicas_available{{{NS}, deployment="flywheel-serving"}}', "0x10")], "5m",
         {"namespace": "flywheel", "deployment": "flywheel-serving"}),
        ([series(f'kube_deployment_status_replicas_available{{{NS}, deployment="flywheel-serving"}}', "2x10")], "5m")),
    "FlywheelServingAvailabilityBurn": (
        ([series(f'{REQ}, status="200"}}', "0+600x70"), series(f'{REQ}, status="500"}}', "0+60x70")], "65m", {}),
        ([series(f'{REQ}, status="200"}}', "0+600x70"), series(f'{REQ}, status="500"}}', "0+1x70")], "65m")),
    "FlywheelServingHighErrorRate": (
        ([series(f'{REQ}, status="200"}}', "0+600x30"), series(f'{REQ}, status="500"}}', "0+60x30")], "20m", {}),
        # 4xx is the client's error, not the service's
        ([series(f'{REQ}, status="200"}}', "0+600x30"), series(f'{REQ}, status="400"}}', "0+300x30"),
          series(f'{REQ}, status="500"}}', "0+3x30")], "20m")),
    "FlywheelServingHighLatencyP99": (
        ([series(f'{LAT}, le="0.25"}}', "0x30"), series(f'{LAT}, le="0.5"}}', "0x30"),
          series(f'{LAT}, le="1"}}', "0+100x30"), series(f'{LAT}, le="+Inf"}}', "0+100x30")], "20m", {}),
        ([series(f'{LAT}, le="0.25"}}', "0+100x30"), series(f'{LAT}, le="0.5"}}', "0+100x30"),
          series(f'{LAT}, le="1"}}', "0+100x30"), series(f'{LAT}, le="+Inf"}}', "0+100x30")], "20m")),
    "FlywheelServingNoTraffic": (
        ([series(f'{REQ}, status="200"}}', "5x90")], "70m", {}),
        ([series(f'{REQ}, status="200"}}', "0+10x90")], "70m")),
    "FlywheelModelRefused": (
        ([series(f'flywheel_model_swaps_total{{{NS}, outcome="refused"}}', "0 0 0 1 1 1")], "5m", {}),
        ([series(f'flywheel_model_swaps_total{{{NS}, outcome="refused"}}', "0x10"),
          series(f'flywheel_model_swaps_total{{{NS}, outcome="swapped"}}', "0 0 1 1 2 2")], "5m")),
    "FlywheelPredictionLogLag": (
        ([series(f"flywheel_prediction_log_lag_seconds{{{NS}}}", "600x30")], "20m", {}),
        ([series(f"flywheel_prediction_log_lag_seconds{{{NS}}}", "5x30")], "20m")),
    "FlywheelPredictionLogSpillErrors": (
        ([series(f"flywheel_prediction_log_spill_errors_total{{{NS}}}", "0 0 1 1 1")], "4m", {}),
        ([series(f"flywheel_prediction_log_spill_errors_total{{{NS}}}", "0x10")], "4m")),
    "FlywheelDataDrift": (
        ([series(f"flywheel_drift_detected{{{MON}}}", "1x10")], "5m", {"model": "demo"}),
        ([series(f"flywheel_drift_detected{{{MON}}}", "0x10"), series(f"flywheel_drift_share{{{MON}}}", "0.1x10")], "5m")),
    "FlywheelQualityDegraded": (
        ([series(f"flywheel_monitor_quality_degraded{{{MON}}}", "1x10")], "5m", {"model": "demo"}),
        ([series(f"flywheel_monitor_quality_degraded{{{MON}}}", "0x10")], "5m")),
    "FlywheelRetrainFailed": (
        ([series(f"flywheel_retrain_failures_total{{{MON}}}", "2 2 2 3 3 3")], "5m", {"model": "demo"}),
        # failures from long ago: the count stays, the alert must not
        ([series(f"flywheel_retrain_failures_total{{{MON}}}", "3x70")], "65m")),
    "FlywheelRetrainWaitingForRetry": (
        ([series(f'flywheel_retrain_decision{{{MON}, outcome="failed_waiting"}}', "1x10")], "5m", {"model": "demo"}),
        # a retrain in flight, or the retry started: nothing failed is waiting
        ([series(f'flywheel_retrain_decision{{{MON}, outcome="in_flight"}}', "1x10"),
          series(f'flywheel_retrain_decision{{{MON}, outcome="triggered"}}', "1x10")], "5m")),
    "FlywheelRetrainStorm": (
        ([series(f'flywheel_retrain_decisions_total{{{MON}, outcome="triggered"}}', "0 1 2 3 4 5")], "5m", {"model": "demo"}),
        ([series(f'flywheel_retrain_decisions_total{{{MON}, outcome="triggered"}}', "0 0 0 1 1 1"),
          series(f'flywheel_retrain_decisions_total{{{MON}, outcome="cooldown"}}', "0 1 2 3 4 5")], "5m")),
    "FlywheelMonitorPassFailed": (
        ([series(f'flywheel_monitor_status{{{MON}, status="error"}}', "1x10"),
          series(f'flywheel_monitor_status{{{MON}, status="ok"}}', "0x10")], "5m", {"model": "demo"}),
        ([series(f'flywheel_monitor_status{{{MON}, status="error"}}', "0x10"),
          series(f'flywheel_monitor_status{{{MON}, status="ok"}}', "1x10")], "5m")),
    "FlywheelMonitorStale": (
        # last success at t=0, evaluated four hours later (the default limit is three)
        ([series(f"flywheel_monitor_last_success_timestamp_seconds{{{MON}}}", "0x300")], "4h", {"model": "demo"}),
        # a pass every minute: the last success is always now
        ([series(f"flywheel_monitor_last_success_timestamp_seconds{{{MON}}}", "0+60x300")], "4h")),
    "FlywheelMonitorJobFailed": (
        # the newest job failed
        ([series(f'kube_job_status_start_time{{{NS}, job_name="flywheel-monitor-100"}}', "100x10"),
          series(f'kube_job_status_failed{{{NS}, job_name="flywheel-monitor-100"}}', "0x10"),
          series(f'kube_job_status_start_time{{{NS}, job_name="flywheel-monitor-200"}}', "200x10"),
          series(f'kube_job_status_failed{{{NS}, job_name="flywheel-monitor-200"}}', "1x10")], "5m",
         {"namespace": "flywheel", "job_name": "flywheel-monitor-200"}),
        # an old failed Job is still there (failedJobsHistoryLimit), but a newer one succeeded
        ([series(f'kube_job_status_start_time{{{NS}, job_name="flywheel-monitor-100"}}', "100x10"),
          series(f'kube_job_status_failed{{{NS}, job_name="flywheel-monitor-100"}}', "1x10"),
          series(f'kube_job_status_start_time{{{NS}, job_name="flywheel-monitor-200"}}', "200x10"),
          series(f'kube_job_status_failed{{{NS}, job_name="flywheel-monitor-200"}}', "0x10")], "5m")),
}


@pytest.fixture(scope="module")
def promtool() -> str:
    return binary("promtool", "prometheus")


@pytest.fixture(scope="module")
def groups() -> list[dict[str, Any]]:
    return rule_groups()


def test_promtool_accepts_the_rendered_rules(promtool: str, groups: list[dict[str, Any]], tmp_path: Path) -> None:
    proc = check_rules(promtool, groups, tmp_path / "rules.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in groups)} rules found" in proc.stdout


def test_promtool_rejects_a_broken_rule(promtool: str, groups: list[dict[str, Any]], tmp_path: Path) -> None:
    """The check above can fail: one unbalanced bracket is refused."""
    broken = copy.deepcopy(groups)
    broken[0]["rules"][0]["expr"] += ")"
    assert check_rules(promtool, broken, tmp_path / "rules.yaml").returncode != 0


def test_every_alert_has_a_firing_and_a_quiet_case(groups: list[dict[str, Any]]) -> None:
    assert set(alerts(groups)) == set(CASES)


def _unit_tests(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tests = []
    for name, rule in alerts(groups).items():
        (fire, fire_at, labels), (quiet, quiet_at) = CASES[name]
        expected = {"exp_labels": {**labels, "severity": rule["labels"]["severity"]}}
        tests.append({"name": f"{name} fires", "interval": "1m", "input_series": fire,
                      "alert_rule_test": [{"alertname": name, "eval_time": fire_at, "exp_alerts": [expected]}]})
        tests.append({"name": f"{name} stays quiet", "interval": "1m", "input_series": quiet,
                      "alert_rule_test": [{"alertname": name, "eval_time": quiet_at, "exp_alerts": []}]})
    return tests


def _run_unit_tests(promtool: str, groups: list[dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess:
    # Annotations are Prometheus templates expanded per alert; `check rules` validates them,
    # the unit tests compare labels (which is what routing and silences read).
    bare = copy.deepcopy(groups)
    for g in bare:
        for r in g["rules"]:
            r.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": bare}, sort_keys=False))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": _unit_tests(groups)}, sort_keys=False))
    return subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False)


def test_every_alert_fires_on_its_series_and_not_on_quiet_ones(promtool: str, groups: list[dict[str, Any]],
                                                                tmp_path: Path) -> None:
    proc = _run_unit_tests(promtool, groups, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_old_job_failure_alert_would_fail_its_quiet_case(promtool: str, groups: list[dict[str, Any]],
                                                            tmp_path: Path) -> None:
    """The unit tests can fail: the old expression fired while any failed Job object existed."""
    old = copy.deepcopy(groups)
    for g in old:
        for r in g["rules"]:
            if r.get("alert") == "FlywheelMonitorJobFailed":
                r["expr"] = 'kube_job_status_failed{namespace="flywheel", job_name=~"flywheel-monitor.*"} > 0'
    proc = _run_unit_tests(promtool, old, tmp_path)
    assert proc.returncode != 0
    assert "FlywheelMonitorJobFailed stays quiet" in proc.stdout + proc.stderr


def test_thresholds_follow_values(groups: list[dict[str, Any]]) -> None:
    changed = alerts(rule_groups({"metrics": {"prometheusRule": {"p99LatencySeconds": 0.25, "monitorStaleMinutes": 90}}}))
    assert "> 0.25" in changed["FlywheelServingHighLatencyP99"]["expr"]
    assert "> 5400" in changed["FlywheelMonitorStale"]["expr"]
    assert "> 0.072" in alerts(groups)["FlywheelServingAvailabilityBurn"]["expr"]  # 14.4x the budget of 99.5%


def test_no_rule_or_panel_selects_on_the_operators_endpoint_label(groups: list[dict[str, Any]]) -> None:
    exprs = [r["expr"] for g in groups for r in g["rules"]] + [q for _, q in dashboard_queries()]
    assert not [e for e in exprs if "endpoint" in e]


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    queries = dashboard_queries()
    rules = [{"record": f"dashboard:panel_{i}:query", "expr": q} for i, (_, q) in enumerate(queries)]
    proc = check_rules(promtool, [{"name": "dashboard", "rules": rules}], tmp_path / "dashboard.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_covers_the_loop_at_a_glance() -> None:
    board = dashboard()
    titles = {p["title"] for p in board["panels"]}
    names = set().union(*(metric_names(q) for _, q in dashboard_queries(board)))
    assert {"flywheel_requests_total", "flywheel_request_duration_seconds_bucket", "flywheel_model_info",
            "flywheel_drift_share", "flywheel_retrain_decisions_total", "flywheel_prediction_log_lag_seconds"} <= names
    for title in ("Requests / s", "p99 latency", "5xx ratio", "Version in service", "Drift share over time", "Retrains",
                  "Prediction log lag"):
        assert title in titles
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_metric_names_leave_out_labels_functions_and_keywords() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, api) (rate(flywheel_request_duration_seconds_bucket{status=~"5..", '
            'api="x"}[5m]))) > 1e3 and on (namespace) time() - max without (pod) (flywheel_monitor_last_success_timestamp_seconds)'
            ' unless vector(0) or kube_job_status_failed offset 5m')
    assert metric_names(expr) == {"flywheel_request_duration_seconds_bucket",
                                  "flywheel_monitor_last_success_timestamp_seconds", "kube_job_status_failed"}
