"""The decision comes before the reports, and a pass's metrics are its summary's figures.

Given prediction logs in the store, when a pass runs with each ``monitor_reports`` policy,
then the decision and summary.json are the same whether or not Evidently renders, the
report appears only when the policy asks, and the figures (summary.json ``metrics``) hold
the drift, rows, rates, decision and running retrain counters.
"""

from __future__ import annotations

import datetime as dt
import json

from components.settings import Settings
from services.monitoring import metrics as monitor_metrics
from services.monitoring.decision import Outcome
from services.monitoring.monitor import run_pass, table
from testkit.logs import NOW, Served, make_frame, write_logs
from tests.integration.monitoring.test_pass import WINDOW_START, RecordingTrigger


def _summary(served: Served, s) -> dict:
    return json.loads(served.store.read(s.outputs["summary"]))


def test_quiet_window_skips_reports_under_drift_policy_but_decides_the_same(mon_settings: Settings, served: Served) -> None:
    write_logs(served, make_frame(3000, seed=21), WINDOW_START, 60)
    s = run_pass(mon_settings.model_copy(update={"monitor_reports": "drift"}), served.store, None, now=NOW)
    assert s.status == "ok" and s.decision.outcome is Outcome.NO_DRIFT
    assert "report" not in s.outputs and "reports_s" not in s.timings and s.timings["decision_s"] > 0
    assert not [k for k in served.store.list(f"monitoring/{mon_settings.model}/") if k.endswith(".html")]
    body = _summary(served, s)
    assert body["metrics"]["flywheel_drift_detected"] == 0 and body["metrics"]["flywheel_monitor_evaluated_rows"] == 3000
    assert body["metrics"]['flywheel_retrain_decision{outcome="no_drift"}'] == 1


def test_drift_renders_reports_after_the_decision_and_counts_it(mon_settings: Settings, served: Served) -> None:
    settings = mon_settings.model_copy(update={"monitor_reports": "drift"})
    write_logs(served, make_frame(3000, seed=22, shift=0.4), WINDOW_START, 60)
    s = run_pass(settings, served.store, RecordingTrigger(), now=NOW)
    assert s.decision.outcome is Outcome.TRIGGERED
    assert s.outputs["report"].endswith("report.html") and s.timings["reports_s"] > 0
    body = _summary(served, s)  # rewritten after the reports: it says where they are
    assert body["outputs"]["report"] == s.outputs["report"]
    m = body["metrics"]
    assert m["flywheel_drift_detected"] == 1 and m["flywheel_drift_share"] == s.drift["share"]
    assert m['flywheel_retrain_decisions_total{outcome="triggered"}'] == 1
    assert m['flywheel_retrain_decisions_total{outcome="cooldown"}'] == 0
    assert m["flywheel_retrain_in_flight"] == 0 and m["flywheel_retrain_failures_total"] == 0
    smallest = min(s.drift["columns"], key=lambda c: c["p_value"])
    assert m[f'flywheel_drift_p_value{{feature="{smallest["column"]}",method="{smallest["method"]}"}}'] == smallest["p_value"]
    assert "flywheel_drift_share " in table(s)

    # the next window drifts too, inside the cooldown: the counters run on across passes
    later = NOW + dt.timedelta(hours=1)
    write_logs(served, make_frame(3000, seed=23, shift=0.4), WINDOW_START + dt.timedelta(hours=1), 60)
    s2 = run_pass(settings.model_copy(update={"cooldown_minutes": 600}), served.store, RecordingTrigger(), now=later)
    assert s2.decision.outcome is Outcome.COOLDOWN
    m2 = s2.metrics
    assert m2['flywheel_retrain_decisions_total{outcome="triggered"}'] == 1
    assert m2['flywheel_retrain_decisions_total{outcome="cooldown"}'] == 1


def test_a_trigger_that_fails_is_counted(mon_settings: Settings, served: Served) -> None:
    write_logs(served, make_frame(3000, seed=25, shift=0.4), WINDOW_START, 60)
    s = run_pass(mon_settings.model_copy(update={"monitor_reports": "never"}), served.store,
                 RecordingTrigger(fail=RuntimeError("KFP is down")), now=NOW)
    # the window was evaluated (status ok, its figures pushed whole); the failure has its own outcome
    assert s.status == "ok" and s.decision.outcome is Outcome.FAILED and s.exit_code == 3
    assert s.metrics['flywheel_retrain_decisions_total{outcome="failed"}'] == 1
    assert s.metrics["flywheel_retrain_failures_total"] == 1
    assert s.metrics['flywheel_monitor_status{status="ok"}'] == 1
    assert s.metrics['flywheel_retrain_decision{outcome="failed"}'] == 1
    pushed = monitor_metrics.registry_of(monitor_metrics.figures(s.to_dict()))
    from prometheus_client import generate_latest

    assert "flywheel_retrain_failures_total 1.0" in generate_latest(pushed).decode()


def test_never_policy_keeps_the_decision_and_writes_no_report(mon_settings: Settings, served: Served) -> None:
    write_logs(served, make_frame(3000, seed=24, shift=0.4), WINDOW_START, 60)
    s = run_pass(mon_settings.model_copy(update={"monitor_reports": "never"}), served.store, None, now=NOW)
    assert s.decision.outcome is Outcome.NO_TRIGGER and s.decision.wanted is True
    assert "report" not in s.outputs and "evidently_snapshots" not in s.outputs


def test_figures_are_bounded_per_feature_and_a_failed_pass_pushes_only_its_status() -> None:
    columns = [{"column": f"f{i:03d}", "method": "ks", "p_value": i / 1000, "drifted": i < 50} for i in range(300)]
    summary = {"status": "ok", "drift": {"share": 50 / 300, "share_threshold": 0.3, "detected": True, "columns": columns},
               "columns": {f"f{i:03d}": {"null_rate": i / 300} for i in range(300)},
               "decision": {"wanted": True, "outcome": "cooldown"}, "duration_s": 1.5, "finished_at_unix": 1e9}
    figs = monitor_metrics.figures(summary)
    p_values = [f for f in figs if f.name == "flywheel_drift_p_value"]
    assert len(p_values) == monitor_metrics.MAX_FEATURE_SERIES
    assert {dict(f.labels)["feature"] for f in p_values} == {f"f{i:03d}" for i in range(monitor_metrics.MAX_FEATURE_SERIES)}
    nulls = [f for f in figs if f.name == "flywheel_monitor_null_rate"]
    assert len(nulls) == monitor_metrics.MAX_FEATURE_SERIES and max(f.value for f in nulls) == 299 / 300
    assert next(f for f in figs if f.name == "flywheel_drift_features_drifted").value == 50
    assert {f.key for f in figs if f.name == "flywheel_monitor_last_success_timestamp_seconds"}
    failed = monitor_metrics.figures({**summary, "status": "error"})
    assert not [f for f in failed if f.name == "flywheel_monitor_last_success_timestamp_seconds"]
    text = monitor_metrics.registry_of(failed, monitor_metrics.ERROR_FAMILIES)
    from prometheus_client import generate_latest

    exposed = generate_latest(text).decode()
    assert 'flywheel_monitor_status{status="error"} 1.0' in exposed and "flywheel_drift_share" not in exposed


def test_a_pass_that_finds_a_failed_retrain_waiting_says_so_and_not_in_flight(mon_settings: Settings, served: Served) -> None:
    settings = mon_settings.model_copy(update={"monitor_reports": "never", "retry_backoff_minutes": 30})
    write_logs(served, make_frame(3000, seed=26, shift=0.4), WINDOW_START, 60)
    trigger = RecordingTrigger(fail=RuntimeError("KFP API unreachable"))
    run_pass(settings, served.store, trigger, now=NOW)

    s = run_pass(settings, served.store, trigger, now=NOW + dt.timedelta(minutes=2))

    assert len(trigger.requests) == 1 and s.exit_code == 3
    m = s.metrics
    assert m['flywheel_retrain_decision{outcome="failed_waiting"}'] == 1
    assert 'flywheel_retrain_decision{outcome="in_flight"}' not in m and m["flywheel_retrain_in_flight"] == 0
    assert m['flywheel_retrain_decisions_total{outcome="failed_waiting"}'] == 1
    assert m['flywheel_retrain_decisions_total{outcome="in_flight"}'] == 0
