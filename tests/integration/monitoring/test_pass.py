"""A whole monitoring pass against a real store, real Evidently and a real registry version.

Given prediction logs (and feedback) in the documented layout, when ``run_pass`` runs,
then summary.json, report.html, the Evidently workspace and the trigger records say what
happened, and bad input is reported without damage and without a retrain.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

import pytest

from components.settings import Settings
from components.store import S3Store, open_store
from services.monitoring import monitor
from services.monitoring.decision import Outcome
from services.monitoring.monitor import run_pass
from services.monitoring.trigger import RetrainRequest, records
from testkit.logs import FEATURES, NOW, Served, make_frame, race_passes, serve_version, write_logs

WINDOW_START = NOW.replace(minute=0) - dt.timedelta(hours=1)  # the window a pass at NOW evaluates


class RecordingTrigger:
    """A trigger that records what it was asked (the local and KFP ones have their own tests)."""

    kind = "recording"
    source, reuses_champion_data, include_feedback = "datasets/test/train.parquet", False, False

    def __init__(self, status: str = "succeeded", fail: Exception | None = None) -> None:
        self.requests: list[RetrainRequest] = []
        self.status, self.fail = status, fail
        self.lock = threading.Lock()

    def start(self, request: RetrainRequest) -> dict[str, Any]:
        with self.lock:
            self.requests.append(request)
        if self.fail:
            raise self.fail
        return {"status": self.status, "run_id": f"run-{len(self.requests)}"}

    def poll(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"status": record["status"]}


def summary_of(served: Served, s: monitor.Summary) -> dict[str, Any]:
    return json.loads(served.store.read(s.outputs["summary"]))


def test_quiet_window_is_reported_and_not_retrained(mon_settings: Settings, served: Served) -> None:
    write_logs(served, make_frame(4000, seed=11), WINDOW_START, 60, feedback_share=0.2)
    trigger = RecordingTrigger()

    s = run_pass(mon_settings, served.store, trigger, now=NOW)

    assert s.status == "ok" and s.exit_code == 0
    assert s.window["key"] == "20260310T110000Z--20260310T120000Z"
    assert s.decision.retrain is False and s.decision.reason.startswith("no retrain: no drift")
    assert trigger.requests == [] and records(served.store, mon_settings.model) == []
    body = summary_of(served, s)
    assert body["rows"]["evaluated"] == 4000 and body["rows"]["labelled"] > 600
    assert {c["column"] for c in body["drift"]["columns"]} == set(FEATURES)
    assert {c["method"] for c in body["drift"]["columns"]} == {"ks", "chi2_homogeneity"}
    assert body["quality"]["current"]["balanced_accuracy"] > 0.8 and not body["quality"]["degraded"]
    assert 0 <= body["columns"]["x0"]["psi"] < 0.05 and body["columns"]["x0"]["rows"] == 4000
    html = served.store.read(s.outputs["report"])
    assert b"<html" in html[:2000].lower() and len(html) > 10_000


def test_report_and_workspace_show_the_p_values_the_decision_used(mon_settings: Settings, served: Served) -> None:
    from evidently.ui.workspace import Workspace

    write_logs(served, make_frame(3000, seed=12, shift=0.3), WINDOW_START, 60, feedback_share=0.3)

    s = run_pass(mon_settings, served.store, None, now=NOW)

    ws = Workspace(mon_settings.evidently_workspace)
    project = ws.search_project(f"flywheel-{mon_settings.model}")[0]
    runs = [ws.get_run(project.id, sid) for sid in ws.list_runs(project.id)]
    assert sorted(r.name.split()[0] for r in runs) == ["drift", "quality"]
    drift_run = next(r for r in runs if r.name.startswith("drift"))
    assert drift_run.timestamp.replace(tzinfo=None) == NOW.replace(minute=0, tzinfo=None)  # the window's end
    values = {}
    for result in drift_run.metric_results.values():
        params = result.metric_value_location.metric.params
        if params.get("type", "").endswith("ValueDrift"):
            values[params["column"]] = result.value
    for col in s.drift["columns"]:
        assert values[col["column"]] == pytest.approx(col["p_value"], rel=1e-6, abs=1e-300)
    assert s.decision.outcome is Outcome.NO_TRIGGER and "no trigger is configured" in s.decision.reason


def test_drift_triggers_once_then_cooldown_blocks(mon_settings: Settings, served: Served) -> None:
    settings = mon_settings.model_copy(update={"cooldown_minutes": 180})
    write_logs(served, make_frame(5000, seed=13, shift=0.2), WINDOW_START, 120)
    trigger = RecordingTrigger()

    first = run_pass(settings, served.store, trigger, now=NOW)
    second = run_pass(settings, served.store, trigger, now=NOW + dt.timedelta(hours=1))

    assert first.decision.retrain is True and ("Bonferroni" in first.decision.reason or "share" in first.decision.reason)
    assert [r.key for r in trigger.requests] == ["20260310T110000Z"]
    rec = json.loads(served.store.read("triggers/test/20260310T110000Z.json"))
    assert rec["status"] == "succeeded" and rec["run_id"] == "run-1" and rec["version"] == served.version
    assert second.decision.outcome is Outcome.COOLDOWN and "inside the cooldown" in second.decision.reason
    assert len(trigger.requests) == 1


def test_two_passes_racing_on_one_window_trigger_once(mon_settings: Settings, served: Served) -> None:
    write_logs(served, make_frame(3000, seed=14, shift=0.4), WINDOW_START, 60)
    trigger = RecordingTrigger()
    results: list[monitor.Summary] = race_passes(mon_settings, served.store, trigger, NOW, 2, join_seconds=120)

    assert len(results) == 2 and all(r.status == "ok" for r in results)
    assert len(trigger.requests) == 1
    assert len(records(served.store, mon_settings.model)) == 1
    lost = [r for r in results if not r.decision.retrain]
    assert len(lost) == 1 and ("already triggered" in lost[0].decision.reason or "in flight" in lost[0].decision.reason)


def test_concept_shift_is_caught_through_feedback_quality(mon_settings: Settings, served: Served) -> None:
    write_logs(served, make_frame(4000, seed=15, flip=True), WINDOW_START, 60, feedback_share=0.25)
    trigger = RecordingTrigger()

    s = run_pass(mon_settings, served.store, trigger, now=NOW)

    assert s.drift["detected"] is False  # the features did not move
    assert s.quality["degraded"] is True and s.quality["drop"] > 0.5
    assert s.decision.retrain is True and "quality degraded" in s.decision.reason
    assert len(trigger.requests) == 1
    assert s.outputs.get("quality", "").endswith("quality.html")


def test_no_logs_yet_is_a_clean_skip(mon_settings: Settings, served: Served) -> None:
    trigger = RecordingTrigger()
    s = run_pass(mon_settings, served.store, trigger, now=NOW)
    assert s.status == "skipped" and s.exit_code == 0 and "no prediction logs" in s.message
    assert summary_of(served, s)["decision"]["retrain"] is False and trigger.requests == []


def test_too_few_rows_and_other_versions_are_not_evaluated(mon_settings: Settings, served: Served) -> None:
    write_logs(served, make_frame(300, seed=16, shift=1.0), WINDOW_START, 60)
    old = make_frame(2000, seed=17).drop(columns=["color"])  # an older version with other features
    logs = old.assign(color="red")
    written = write_logs(served, logs, WINDOW_START, 60, version="v0", part="old")
    key = f"predictions/test/date={written['_time'].dt.strftime('%Y-%m-%d').iloc[0]}/old.parquet"
    from components.store import read_parquet, write_parquet

    write_parquet(served.store, key, read_parquet(served.store, key).drop(columns=["color"]))
    trigger = RecordingTrigger()

    s = run_pass(mon_settings, served.store, trigger, now=NOW)

    assert s.status == "skipped" and s.exit_code == 0
    assert s.rows["evaluated"] == 300 and s.rows["by_version"]["v0"] == 2000
    assert s.decision.outcome is Outcome.TOO_FEW_ROWS and "min_rows" in s.decision.reason and trigger.requests == []
    assert s.files["skipped"] == []  # rows of another version are counted, not errors


def test_corrupt_and_partial_files_are_skipped_and_left_alone(mon_settings: Settings, served: Served) -> None:
    logs = write_logs(served, make_frame(3000, seed=18), WINDOW_START, 60, part="good")
    day = logs["_time"].dt.strftime("%Y-%m-%d").iloc[0]
    good = served.store.read(f"predictions/test/date={day}/good.parquet")
    served.store.write(f"predictions/test/date={day}/partial.parquet", good[: len(good) // 2])
    served.store.write(f"predictions/test/date={day}/garbage.parquet", b"not parquet at all")

    s = run_pass(mon_settings, served.store, RecordingTrigger(), now=NOW)

    assert s.status == "ok" and s.rows["evaluated"] == 3000
    assert sorted(f["key"].rsplit("/", 1)[1] for f in s.files["skipped"]) == ["garbage.parquet", "partial.parquet"]
    assert served.store.read(f"predictions/test/date={day}/partial.parquet") == good[: len(good) // 2]
    assert any("partial.parquet" in w for w in summary_of(served, s)["warnings"])


def test_missing_reference_fails_the_pass_without_a_retrain(mon_settings: Settings, served: Served) -> None:
    write_logs(served, make_frame(3000, seed=19, shift=1.0), WINDOW_START, 60)
    served.store.delete(served.registry.key(served.version, "reference.parquet"))
    trigger = RecordingTrigger()

    s = run_pass(mon_settings, served.store, trigger, now=NOW)

    assert s.status == "error" and s.exit_code == 1 and "reference.parquet" in s.message
    assert trigger.requests == [] and records(served.store, "test") == []
    assert summary_of(served, s)["decision"]["retrain"] is False


def test_store_down_fails_the_pass_cleanly(mon_settings: Settings) -> None:
    from components.net import free_port

    dead = mon_settings.model_copy(update={"store": "s3://nowhere/x", "s3_endpoint_url": f"http://127.0.0.1:{free_port()}",
                                           "s3_max_attempts": 1})
    trigger = RecordingTrigger()
    s = run_pass(dead, S3Store(dead.store, dead), trigger, now=NOW)
    assert s.status == "error" and s.exit_code == 1 and "unreachable" in s.message
    assert s.decision.outcome is Outcome.ERROR and trigger.requests == []


def test_trigger_failure_leaves_a_failed_record_and_exits_with_its_own_code(mon_settings: Settings, served: Served) -> None:
    write_logs(served, make_frame(3000, seed=20, shift=0.5), WINDOW_START, 60)
    s = run_pass(mon_settings, served.store, RecordingTrigger(fail=RuntimeError("cluster on fire")), now=NOW)
    assert s.exit_code == monitor.EXIT_RETRAIN_FAILED and s.status == "ok" and s.decision.outcome is Outcome.FAILED
    assert s.decision.retrain is False and "cluster on fire" in s.decision.reason
    [rec] = records(served.store, "test")
    assert rec["status"] == "failed" and "cluster on fire" in rec["error"]


def test_windows_follow_the_last_pass_without_window_minutes(mon_settings: Settings, served: Served) -> None:
    settings = mon_settings.model_copy(update={"window_minutes": None})
    write_logs(served, make_frame(2000, seed=21), NOW - dt.timedelta(hours=3), 60)
    first = run_pass(settings, served.store, None, now=NOW)
    write_logs(served, make_frame(1500, seed=22), NOW + dt.timedelta(minutes=5), 30)
    second = run_pass(settings, served.store, None, now=NOW + dt.timedelta(hours=1))
    assert first.window["start"] is None and first.rows["evaluated"] == 2000
    assert second.window["start"] == first.window["end"] and second.rows["evaluated"] == 1500


def test_pass_reads_an_s3_store(s3_settings: Settings, tmp_path) -> None:
    settings = s3_settings.model_copy(update={"window_minutes": 60, "evidently_workspace": str(tmp_path / "ev"),
                                              "sample_size": 5000})
    store = open_store(settings.store, settings)
    served = serve_version(store, settings.model)
    write_logs(served, make_frame(2500, seed=23), WINDOW_START, 60, feedback_share=0.3)
    s = run_pass(settings, store, None, now=NOW)
    assert s.status == "ok" and s.rows["evaluated"] == 2500 and s.rows["labelled"] > 500
    assert store.exists(s.outputs["report"])
