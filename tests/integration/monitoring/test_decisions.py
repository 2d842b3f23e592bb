"""Decisions under faults: a failed retrain is retried with backoff, never twice in flight, and
drift without new labels raises the alarm instead of retraining on the champion's own data.

Given a served version and drifted logs in a real store, when passes run with a trigger that
fails and then works, then the trigger records, summaries and windows say what happened.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

from components.settings import Settings
from services.monitoring import monitor
from services.monitoring.decision import Outcome
from services.monitoring.monitor import run_pass
from services.monitoring.trigger import RetrainRequest, records
from testkit.logs import NOW, Served, make_frame, race_passes, write_logs

WINDOW_START = NOW.replace(minute=0) - dt.timedelta(hours=1)


class FlakyTrigger:
    """Fails the first ``failures`` starts, then succeeds; counts how many starts overlap."""

    kind = "flaky"

    def __init__(self, failures: int = 1, hold: float = 0.0, reuses_champion_data: bool = False,
                 include_feedback: bool = False) -> None:
        self.failures, self.hold = failures, hold
        self.requests: list[RetrainRequest] = []
        self.lock = threading.Lock()
        self.running = self.max_running = 0
        self.reuses_champion_data, self.include_feedback, self.source = reuses_champion_data, include_feedback, "data"

    def start(self, request: RetrainRequest) -> dict[str, Any]:
        with self.lock:
            self.requests.append(request)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            fail = len(self.requests) <= self.failures
        try:
            threading.Event().wait(self.hold)
            if fail:
                raise RuntimeError("KFP API answered 503")
            return {"status": "succeeded", "run_id": request.run_name, "version": "v9", "registered": True}
        finally:
            with self.lock:
                self.running -= 1

    def poll(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"status": record["status"]}


def settings_for(mon_settings: Settings, **extra: Any) -> Settings:
    return mon_settings.model_copy(update={"retry_backoff_minutes": 10, "retry_max_attempts": 3, **extra})


def test_a_failed_trigger_is_retried_after_its_backoff(mon_settings: Settings, served: Served) -> None:
    settings = settings_for(mon_settings)
    write_logs(served, make_frame(3000, seed=31, shift=0.5), WINDOW_START, 60)
    trigger = FlakyTrigger(failures=1)

    first = run_pass(settings, served.store, trigger, now=NOW)
    [rec] = records(served.store, "test")
    assert first.exit_code == monitor.EXIT_RETRAIN_FAILED and rec["status"] == "failed" and rec["attempts"] == 1
    assert "503" in rec["error"] and rec["retry_at"] and dt.datetime.fromisoformat(rec["retry_at"]) > NOW
    assert first.decision.done is False

    early = run_pass(settings, served.store, trigger, now=NOW + dt.timedelta(minutes=1))
    assert len(trigger.requests) == 1 and "next attempt at" in early.decision.reason

    later = dt.datetime.fromisoformat(rec["retry_at"]) + dt.timedelta(seconds=1)
    retried = run_pass(settings, served.store, trigger, now=later)
    [rec] = records(served.store, "test")
    assert len(trigger.requests) == 2 and trigger.requests[1].key == trigger.requests[0].key
    assert rec["status"] == "succeeded" and rec["attempts"] == 2 and rec["errors"][0].startswith("RuntimeError")
    assert retried.exit_code == 0 and retried.decision.attempt == 2 and retried.decision.outcome is Outcome.TRIGGERED


def test_backoff_doubles_and_the_retrain_is_given_up(mon_settings: Settings, served: Served) -> None:
    settings = settings_for(mon_settings)
    write_logs(served, make_frame(3000, seed=32, shift=0.5), WINDOW_START, 60)
    trigger = FlakyTrigger(failures=10)
    now, gaps = NOW, []
    for _ in range(3):
        run_pass(settings, served.store, trigger, now=now)
        [rec] = records(served.store, "test")
        if rec.get("retry_at"):
            gaps.append(dt.datetime.fromisoformat(rec["retry_at"]) - dt.datetime.fromisoformat(rec["updated_at"]))
            now = dt.datetime.fromisoformat(rec["retry_at"]) + dt.timedelta(seconds=1)
    assert [round(g.total_seconds() / 60) for g in gaps] == [10, 20]
    assert rec["status"] == "given_up" and rec["attempts"] == 3 and len(trigger.requests) == 3
    run_pass(settings, served.store, trigger, now=now + dt.timedelta(hours=5))
    assert len(trigger.requests) == 3  # given up: no fourth attempt on that window


def test_passes_racing_on_a_retry_start_it_once_and_never_two_in_flight(mon_settings: Settings, served: Served) -> None:
    settings = settings_for(mon_settings)
    write_logs(served, make_frame(3000, seed=33, shift=0.5), WINDOW_START, 60)
    trigger = FlakyTrigger(failures=1, hold=0.5)
    run_pass(settings, served.store, trigger, now=NOW)
    [rec] = records(served.store, "test")
    later = dt.datetime.fromisoformat(rec["retry_at"]) + dt.timedelta(seconds=1)
    results = race_passes(settings, served.store, trigger, later, 3, join_seconds=120)

    assert len(results) == 3 and len(trigger.requests) == 2  # the failed start, then exactly one retry
    assert trigger.max_running == 1
    [rec] = records(served.store, "test")
    assert rec["status"] == "succeeded" and rec["attempts"] == 2
    others = [r for r in results if r.decision.outcome is not Outcome.TRIGGERED]
    assert len(others) == 2 and all(r.decision.outcome in (Outcome.DUPLICATE, Outcome.IN_FLIGHT) for r in others)
    assert all("another pass" in r.decision.reason or "in flight" in r.decision.reason for r in others)


def test_a_window_whose_retrain_failed_stays_open_until_its_retry(mon_settings: Settings, served: Served) -> None:
    """A rerun before the retry time (the Job's retry) re-evaluates that window; the first pass after it retries."""
    settings = settings_for(mon_settings, window_minutes=None)
    write_logs(served, make_frame(3000, seed=34, shift=0.5), NOW - dt.timedelta(hours=2), 60)
    trigger = FlakyTrigger(failures=1)

    first = run_pass(settings, served.store, trigger, now=NOW)
    rerun = run_pass(settings, served.store, trigger, now=NOW + dt.timedelta(seconds=20))
    windows = {k.split("/")[2] for k in served.store.list("monitoring/test/") if k.endswith("summary.json")}
    later = run_pass(settings, served.store, trigger, now=NOW + dt.timedelta(minutes=30))

    assert first.exit_code == monitor.EXIT_RETRAIN_FAILED and first.decision.outcome is Outcome.FAILED
    assert not first.decision.done
    assert rerun.exit_code == monitor.EXIT_RETRAIN_FAILED and rerun.decision.outcome is Outcome.FAILED_WAITING
    assert rerun.window == first.window and windows == {first.window["key"]}  # no second window's report
    # after the retry time: from the open window's start to now, and the retry succeeds
    assert later.window["start"] == first.window["start"] and later.window["end"] > first.window["end"]
    assert later.decision.outcome is Outcome.TRIGGERED and later.decision.attempt == 2 and len(trigger.requests) == 2


def test_drift_without_new_labels_raises_the_alarm_instead_of_retraining(mon_settings: Settings, served: Served) -> None:
    write_logs(served, make_frame(3000, seed=35, shift=0.6), WINDOW_START, 60)  # drifted, no feedback
    trigger = FlakyTrigger(failures=0, reuses_champion_data=True, include_feedback=True)

    s = run_pass(mon_settings, served.store, trigger, now=NOW)

    assert s.drift["detected"] is True and s.decision.outcome is Outcome.ALARM and s.decision.alarm is True
    assert "waiting for labels" in s.decision.reason and trigger.requests == []
    assert records(served.store, "test") == []
    body = json.loads(served.store.read(s.outputs["summary"]))
    assert body["alarm"]["drift"] is True and "feedback" in body["alarm"]["waiting_for"]
    assert "ALARM" in monitor.table(s)


def test_drift_with_new_labels_retrains(mon_settings: Settings, served: Served) -> None:
    write_logs(served, make_frame(3000, seed=36, shift=0.6), WINDOW_START, 60, feedback_share=0.3)
    trigger = FlakyTrigger(failures=0, reuses_champion_data=True, include_feedback=True)
    s = run_pass(mon_settings, served.store, trigger, now=NOW)
    assert s.decision.retrain is True and s.alarm is None and len(trigger.requests) == 1


def test_logs_that_arrive_after_their_window_are_evaluated_in_the_next_one(mon_settings: Settings, served: Served) -> None:
    write_logs(served, make_frame(2000, seed=37), WINDOW_START, 60)
    first = run_pass(mon_settings, served.store, None, now=NOW)
    assert first.rows["evaluated"] == 2000 and first.rows["late"] == 0
    # a spill re-sent after a restart: rows of the evaluated window land after its pass
    write_logs(served, make_frame(700, seed=38), WINDOW_START + dt.timedelta(minutes=10), 30, part="resent-spill")
    write_logs(served, make_frame(1500, seed=39), WINDOW_START + dt.timedelta(hours=1), 60)

    second = run_pass(mon_settings, served.store, None, now=NOW + dt.timedelta(hours=1))
    third = run_pass(mon_settings, served.store, None, now=NOW + dt.timedelta(hours=2))

    assert second.rows["late"] == 700 and second.rows["evaluated"] == 1500 + 700
    assert third.rows.get("late", 0) == 0  # evaluated once: the late file is now seen


class PolledTrigger:
    """Like the KFP trigger: a start returns a running run; a later poll finds the first one failed."""

    kind = "polled"
    source, reuses_champion_data, include_feedback = "data", False, False

    def __init__(self) -> None:
        self.starts = 0

    def start(self, request: RetrainRequest) -> dict[str, Any]:
        self.starts += 1
        return {"status": "running", "run_id": f"kfp-{self.starts}"}

    def poll(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"status": "failed", "kfp_state": "FAILED"} if record["run_id"] == "kfp-1" else {"status": "running"}


def test_a_run_found_failed_by_a_later_pass_is_retried_after_its_backoff(mon_settings: Settings, served: Served) -> None:
    settings = settings_for(mon_settings)
    write_logs(served, make_frame(3000, seed=40, shift=0.5), WINDOW_START, 60)
    trigger = PolledTrigger()
    run_pass(settings, served.store, trigger, now=NOW)
    noticed = run_pass(settings, served.store, trigger, now=NOW + dt.timedelta(minutes=1))
    [rec] = records(served.store, "test")
    assert rec["status"] == "failed" and "kfp-1 ended FAILED" in rec["error"] and trigger.starts == 1
    assert noticed.decision.outcome is Outcome.FAILED_WAITING and "next attempt at" in noticed.decision.reason
    run_pass(settings, served.store, trigger, now=dt.datetime.fromisoformat(rec["retry_at"]) + dt.timedelta(seconds=1))
    [rec] = records(served.store, "test")
    assert trigger.starts == 2 and rec["attempts"] == 2 and rec["run_id"] == "kfp-2" and rec["status"] == "running"


def test_a_retrain_given_up_closes_its_window(mon_settings: Settings, served: Served) -> None:
    settings = settings_for(mon_settings, window_minutes=None, retry_max_attempts=1)
    write_logs(served, make_frame(3000, seed=44, shift=0.5), NOW - dt.timedelta(hours=2), 60)
    trigger = FlakyTrigger(failures=5)

    first = run_pass(settings, served.store, trigger, now=NOW)
    later = run_pass(settings, served.store, trigger, now=NOW + dt.timedelta(hours=1))

    [rec] = records(served.store, "test")
    assert rec["status"] == "given_up" and first.decision.outcome is Outcome.GIVEN_UP
    assert first.exit_code == monitor.EXIT_RETRAIN_FAILED
    assert later.window["start"] == first.window["end"]  # given up is an end: the next pass moves on


def test_a_run_found_failed_on_its_last_attempt_is_reported_given_up(mon_settings: Settings, served: Served) -> None:
    settings = settings_for(mon_settings, retry_max_attempts=1)
    write_logs(served, make_frame(3000, seed=45, shift=0.5), WINDOW_START, 60)
    trigger = PolledTrigger()
    started = run_pass(settings, served.store, trigger, now=NOW)

    noticed = run_pass(settings, served.store, trigger, now=NOW + dt.timedelta(minutes=1))

    [rec] = records(served.store, "test")
    assert started.exit_code == 0 and rec["status"] == "given_up" and trigger.starts == 1
    assert noticed.decision.outcome is Outcome.GIVEN_UP and noticed.exit_code == monitor.EXIT_RETRAIN_FAILED
    assert "kfp-1 ended FAILED" in noticed.decision.reason and "given up" in monitor.verdict(noticed)
