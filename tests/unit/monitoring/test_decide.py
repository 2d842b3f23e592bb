"""The retrain decision as a table: figures, trigger and records in, one outcome out; no store.

Given what a window showed, the trigger the monitor holds and the model's trigger records at
a moment, when ``decide`` runs, then it returns one outcome, the action to carry out (start
this window's retrain, retry an earlier one, or none) and a reason.
"""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from services.monitoring.decision import Decision, DecisionInput, Figures, Outcome, Signal, Thresholds, TriggerInfo, decide
from services.monitoring.scan import Window
from services.monitoring.trigger import TriggerRecord

NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
WINDOW = Window(NOW - dt.timedelta(hours=1), NOW)
THRESHOLDS = Thresholds(min_rows=1000, cooldown=dt.timedelta(minutes=60), retry_max_attempts=3)
KFP = TriggerInfo("kfp", "datasets/trips.csv", reuses_champion_data=False, include_feedback=True)
CHAMPION_DATA = TriggerInfo("kfp", "datasets/trips.csv", reuses_champion_data=True, include_feedback=True)
CHAMPION_DATA_NO_FEEDBACK = TriggerInfo("kfp", "datasets/trips.csv", reuses_champion_data=True, include_feedback=False)

DRIFT = Signal(True, "drift: 3 of 6 features have p < 0.05")
NO_DRIFT = Signal(False, "no drift: 0 of 6 features have p < 0.05")
DEGRADED = Signal(True, "balanced_accuracy drop 0.2 > 0.05")
STEADY = Signal(False, "balanced_accuracy drop 0.01 <= 0.05")


def figures(drift: Signal = NO_DRIFT, quality: Signal = STEADY, rows: int = 3000, labelled: int = 0) -> Figures:
    return Figures("v1", logs=True, rows=rows, labelled_rows=labelled, drift=drift, quality=quality)


QUIET, DRIFTED = figures(), figures(DRIFT)
NO_LOGS = Figures("v1", logs=False)
FEW_ROWS = Figures("v1", logs=True, rows=300)


def rec(status: str, key: str = "20260310T100000Z", created: float = 30, updated: float | None = None,
        retry_in: float | None = None, version: str = "v1", attempts: int = 1, poll_error: str | None = None) -> TriggerRecord:
    """A record created ``created`` minutes ago (updated ``updated`` minutes ago), retry due in ``retry_in`` minutes."""
    ago = lambda minutes: NOW - dt.timedelta(minutes=minutes)  # noqa: E731
    return TriggerRecord(key=key, status=status, version=version, trigger="kfp", created_at=ago(created),
                         updated_at=ago(created if updated is None else updated), attempts=attempts,
                         retry_at=None if retry_in is None else NOW + dt.timedelta(minutes=retry_in),
                         error="KFP API at http://ml-pipeline:8888 is unreachable" if status in ("failed", "given_up") else None,
                         run_id="run-1", reason="drift: earlier", poll_error=poll_error)


def decision(f: Figures, trigger: TriggerInfo | None = KFP, records: tuple[TriggerRecord, ...] = (),
             given_up: tuple[str, ...] = ()) -> Decision:
    window = None if f.champion is None else WINDOW
    return decide(DecisionInput("trips", window, f, THRESHOLDS, trigger, records, NOW, given_up))


WAITING = rec("failed", retry_in=5)
DUE = rec("failed", retry_in=-1)

# name: (figures, trigger, records, given_up) -> (outcome, action, wanted, reason fragment)
CASES = {
    "nothing served": ((Figures(None), KFP, (), ()), (Outcome.NO_CHAMPION, None, False, "nothing is served")),
    "no logs": ((NO_LOGS, KFP, (), ()), (Outcome.NO_LOGS, None, False, "no prediction logs")),
    "too few rows": ((FEW_ROWS, KFP, (), ()), (Outcome.TOO_FEW_ROWS, None, False, "300 < min_rows 1000")),
    "quiet window": ((QUIET, KFP, (), ()), (Outcome.NO_DRIFT, None, False, "no retrain: no drift")),
    "drift": ((DRIFTED, KFP, (), ()), (Outcome.TRIGGERED, "start", True, "3 of 6 features")),
    "quality loss alone": ((figures(quality=DEGRADED, labelled=500), KFP, (), ()),
                           (Outcome.TRIGGERED, "start", True, "quality degraded: balanced_accuracy")),
    "drift without a trigger": ((DRIFTED, None, (), ()), (Outcome.NO_TRIGGER, None, True, "no trigger is configured")),
    "quiet without a trigger ignores records": ((QUIET, None, (WAITING,), ()), (Outcome.NO_DRIFT, None, False, "no drift")),
    "drift on the champion's own data": ((DRIFTED, CHAMPION_DATA, (), ()),
                                         (Outcome.ALARM, None, True, "the retrain would read only datasets/trips.csv")),
    "drift, champion's data plus new labels": ((figures(DRIFT, labelled=400), CHAMPION_DATA, (), ()),
                                               (Outcome.TRIGGERED, "start", True, "3 of 6")),
    "labels but feedback left out": ((figures(DRIFT, labelled=400), CHAMPION_DATA_NO_FEEDBACK, (), ()),
                                     (Outcome.ALARM, None, True, "waiting for labels")),
    "drift, a retrain running": ((DRIFTED, KFP, (rec("running", created=10),), ()),
                                 (Outcome.IN_FLIGHT, None, True, "a retrain is in flight")),
    "drift, a start under way (no run id yet)": ((DRIFTED, KFP, (rec("started", created=1),), ()),
                                                 (Outcome.IN_FLIGHT, None, True, "started since")),
    "drift, a run whose state cannot be read": ((DRIFTED, KFP, (rec("running", poll_error="HTTP 503"),), ()),
                                                (Outcome.IN_FLIGHT, None, True, "cannot be read (HTTP 503)")),
    "drift, a stale run (7 h untouched)": ((DRIFTED, KFP, (rec("running", created=420),), ()),
                                           (Outcome.TRIGGERED, "start", True, "3 of 6")),
    "drift, a retaken run (old record, touched now)": ((DRIFTED, KFP, (rec("started", created=420, updated=2),), ()),
                                                       (Outcome.IN_FLIGHT, None, True, "in flight")),
    "quiet, a retrain running": ((QUIET, KFP, (rec("running", created=10),), ()), (Outcome.NO_DRIFT, None, False, "no drift")),
    "drift inside the cooldown": ((DRIFTED, KFP, (rec("succeeded", created=30),), ()),
                                  (Outcome.COOLDOWN, None, True, "inside the cooldown")),
    "drift after the cooldown": ((DRIFTED, KFP, (rec("succeeded", created=90),), ()), (Outcome.TRIGGERED, "start", True, "")),
    "drift, a failed retrain waiting for its retry": ((DRIFTED, KFP, (WAITING,), ()),
                                                      (Outcome.FAILED_WAITING, None, True, "next attempt at")),
    "quiet, a failed retrain waiting": ((QUIET, KFP, (WAITING,), ()), (Outcome.FAILED_WAITING, None, False, "unreachable")),
    "too few rows, a failed retrain waiting": ((FEW_ROWS, KFP, (WAITING,), ()),
                                               (Outcome.FAILED_WAITING, None, False, "too few rows")),
    "alarm, a failed retrain waiting": ((DRIFTED, CHAMPION_DATA, (WAITING,), ()),
                                        (Outcome.FAILED_WAITING, None, True, "ALARM")),
    "drift, a failed retrain due": ((DRIFTED, KFP, (DUE,), ()), (Outcome.TRIGGERED, "retry", True, "attempt 2")),
    "quiet, a failed retrain due": ((QUIET, KFP, (DUE,), ()), (Outcome.TRIGGERED, "retry", True, "retrying retrain")),
    "no logs, a failed retrain due": ((NO_LOGS, KFP, (DUE,), ()), (Outcome.TRIGGERED, "retry", True, "retrying")),
    "a due retry inside another's cooldown": ((DRIFTED, KFP, (DUE, rec("succeeded", key="b", created=20)), ()),
                                              (Outcome.COOLDOWN, None, True, "cooldown")),
    "a failed retrain of an older version": ((DRIFTED, KFP, (rec("failed", retry_in=5, version="v0"),), ()),
                                             (Outcome.TRIGGERED, "start", True, "")),
    "this window's retrain already decided": ((DRIFTED, KFP, (rec("succeeded", key="20260310T110000Z", created=90),), ()),
                                              (Outcome.DUPLICATE, None, True, "already triggered one (succeeded)")),
    "a retrain given up long ago": ((DRIFTED, KFP, (rec("given_up", attempts=3),), ()), (Outcome.TRIGGERED, "start", True, "")),
    "quiet, this pass found the last attempt failed": ((QUIET, KFP, (rec("given_up", attempts=3),), ("20260310T100000Z",)),
                                                       (Outcome.GIVEN_UP, None, False, "failed on its last attempt (3)")),
    "drift, this pass found the last attempt failed": ((DRIFTED, KFP, (rec("given_up", attempts=3),), ("20260310T100000Z",)),
                                                       (Outcome.TRIGGERED, "start", True, "")),
}


@pytest.mark.parametrize("name", CASES)
def test_decide(name: str) -> None:
    (f, trigger, records, given_up), (outcome, action, wanted, fragment) = CASES[name]

    d = decision(f, trigger, records, given_up)

    assert (d.outcome, d.wanted) == (outcome, wanted), d.reason
    assert ("start" if d.request else "retry" if d.retry_of else None) == action
    assert fragment in d.reason
    assert d == decision(f, trigger, records, given_up)  # pure: the same input, the same decision


def test_a_new_retrain_is_keyed_by_its_window_and_decided_against_the_champion() -> None:
    d = decision(DRIFTED)
    assert d.request is not None and d.request.key == "20260310T110000Z" and d.request.version == "v1"
    assert d.request.window == WINDOW.to_dict() and d.request.run_name == "trips-retrain-20260310t110000z"
    assert d.record == "triggers/trips/20260310T110000Z.json" and d.attempt == 1 and d.done


def test_a_waiting_failure_says_when_and_keeps_the_window_open() -> None:
    d = decision(DRIFTED, records=(rec("failed", retry_in=5, attempts=2),))
    assert d.failure is not None and d.failure.retry_at == NOW + dt.timedelta(minutes=5)
    assert (d.failure.attempts, d.failure.max_attempts) == (2, 3) and "unreachable" in d.failure.error
    assert not d.done and not d.retrain
    assert d.to_dict()["failure"]["retry_at"] == "2026-03-10T12:05:00+00:00"


def test_a_due_retry_names_the_record_and_its_next_attempt() -> None:
    d = decision(QUIET, records=(rec("failed", retry_in=-1, attempts=2),))
    assert d.retry_of == "20260310T100000Z" and d.attempt == 3 and d.record == "triggers/trips/20260310T100000Z.json"


# Every combination of one record's state and age with the window and the trigger.
SWEEP = [(f, trigger, (rec(status, created=created, retry_in=retry_in, poll_error=err),))
         for f, trigger, (status, retry_in), created, err in itertools.product(
             (QUIET, DRIFTED, FEW_ROWS, NO_LOGS, figures(DRIFT, labelled=10)), (KFP, CHAMPION_DATA, None),
             (("started", None), ("running", None), ("succeeded", None), ("failed", 5), ("failed", -5), ("given_up", None)),
             (5, 45, 90, 420), (None, "HTTP 503"))]


def test_in_flight_is_decided_only_while_a_retrain_is_in_flight() -> None:
    seen = set()
    for f, trigger, records in SWEEP:
        d = decision(f, trigger, records)
        seen.add(d.outcome)
        if d.outcome is Outcome.IN_FLIGHT:
            assert any(r.in_flight(NOW) for r in records), (f, records)
        if any(r.status == "failed" and r.retry_at and r.retry_at > NOW for r in records) and trigger is not None:
            assert d.outcome is Outcome.FAILED_WAITING or any(r.in_flight(NOW) for r in records)
        assert (d.outcome is Outcome.TRIGGERED) == bool(d.request or d.retry_of)
    assert {Outcome.IN_FLIGHT, Outcome.FAILED_WAITING, Outcome.COOLDOWN, Outcome.TRIGGERED} <= seen


def test_the_trigger_protocol_names_everything_the_decision_reads(settings) -> None:
    from components.data import DatasetSpec
    from pipelines.triggers import KFPTrigger, LocalTrigger
    from services.monitoring.trigger import Trigger

    spec = DatasetSpec("datasets/trips.csv", "y", name="trips")
    local = LocalTrigger(settings, spec, include_feedback=True, reuses_champion_data=True)
    kfp = KFPTrigger(settings, spec, token_path=None)
    assert isinstance(local, Trigger) and isinstance(kfp, Trigger)
    assert TriggerInfo.of(local) == TriggerInfo("local", "datasets/trips.csv", True, True)
    assert TriggerInfo.of(kfp) == TriggerInfo("kfp", "datasets/trips.csv", False, False)

    class StartsOnly:  # what the protocol used to name: the monitor read the rest by getattr
        kind = "bare"

        def start(self, request): ...

        def poll(self, record): ...

    assert not isinstance(StartsOnly(), Trigger)
