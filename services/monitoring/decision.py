"""The retrain decision of a monitoring pass, as a typed value.

``decide`` is pure: it reads what the window showed (``Figures``), the thresholds, the
trigger the monitor was handed (``TriggerInfo``), the model's trigger records and the time,
and returns a ``Decision``: one ``Outcome``, the reason in words, and at most one action
(start this window's retrain, or retry an earlier window's failed one). Carrying the action
out (claim, retake, start) is a separate step in monitor.py; it settles the outcome of an
action as triggered, failed, given_up or duplicate.

The rules, in order: nothing served -> no_champion. No logs, too few rows or no drift ->
no retrain wanted (no_logs, too_few_rows, no_drift), but an earlier window's failed retrain
may still be waiting or due. A wanted retrain without a trigger -> no_trigger; one that would
read only the champion's own data -> alarm. Then: a retrain in flight -> in_flight; an earlier
failed retrain whose retry time lies ahead -> failed_waiting; inside the cooldown -> cooldown;
an earlier failed retrain now due -> retry it; a window that already has a record -> duplicate;
otherwise start this window's retrain. Last, a run this pass found failed on its last attempt
makes the outcome given_up, unless the pass starts a retrain or another one waits.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from components.settings import Settings
from services.monitoring.scan import Window
from services.monitoring.trigger import RetrainRequest, Trigger, TriggerRecord, pending, record_key


class Outcome(StrEnum):
    """What a pass decided: the label of ``flywheel_retrain_decision{outcome}``."""

    NO_CHAMPION = "no_champion"  # nothing is served: nothing to compare with
    NO_LOGS = "no_logs"  # no prediction logs in the window
    TOO_FEW_ROWS = "too_few_rows"  # fewer rows of the served version than min_rows
    NO_DRIFT = "no_drift"  # evaluated: no drift and no quality loss
    NO_TRIGGER = "no_trigger"  # a retrain is wanted but no trigger is configured
    ALARM = "alarm"  # wanted, but the retrain would read only the champion's own data
    IN_FLIGHT = "in_flight"  # wanted, but a retrain is running (a record in flight)
    COOLDOWN = "cooldown"  # wanted, but a retrain started less than cooldown_minutes ago
    DUPLICATE = "duplicate"  # another pass started this window's retrain, or the retry, first
    TRIGGERED = "triggered"  # this pass started a retrain (or the retry of a failed one)
    FAILED = "failed"  # the retrain this pass started failed; it is retried after the backoff
    FAILED_WAITING = "failed_waiting"  # an earlier retrain failed and its retry time lies ahead
    GIVEN_UP = "given_up"  # a retrain failed on its last attempt (retry_max_attempts)
    ERROR = "error"  # the pass failed (store, reference): it decided nothing


# A retrain failed: the pass exits with its own code (monitor.EXIT_RETRAIN_FAILED).
RETRAIN_FAILED = frozenset({Outcome.FAILED, Outcome.FAILED_WAITING, Outcome.GIVEN_UP})
# The window's decision is not carried out yet: the window stays open for the retry.
NOT_DONE = frozenset({Outcome.FAILED, Outcome.FAILED_WAITING})
# What a pass that wanted a retrain can end with: the labels of the decision counters.
WANTED_OUTCOMES = (Outcome.TRIGGERED, Outcome.FAILED, Outcome.IN_FLIGHT, Outcome.COOLDOWN, Outcome.DUPLICATE,
                   Outcome.NO_TRIGGER, Outcome.ALARM, Outcome.FAILED_WAITING, Outcome.GIVEN_UP)


@dataclass(frozen=True)
class Signal:
    """One test's verdict: whether it fired, and the sentence saying why or why not."""

    fired: bool
    reason: str


@dataclass(frozen=True)
class Figures:
    """What the window showed."""

    champion: str | None  # the served version; None: nothing is served
    logs: bool = False  # the window holds prediction logs (readable or not)
    rows: int = 0  # rows of the served version
    labelled_rows: int = 0  # of those, rows with a feedback label
    drift: Signal | None = None  # None: not tested (nothing to evaluate)
    quality: Signal | None = None


@dataclass(frozen=True)
class Thresholds:
    """The settings the decision applies."""

    min_rows: int
    cooldown: dt.timedelta
    retry_max_attempts: int

    @classmethod
    def of(cls, settings: Settings) -> Thresholds:
        """The thresholds the settings set."""
        return cls(settings.min_rows, dt.timedelta(minutes=settings.cooldown_minutes), settings.retry_max_attempts)


@dataclass(frozen=True)
class TriggerInfo:
    """What the decision needs to know of the trigger the monitor was handed."""

    kind: str
    source: str
    reuses_champion_data: bool
    include_feedback: bool

    @classmethod
    def of(cls, trigger: Trigger | None) -> TriggerInfo | None:
        """What the protocol says of ``trigger``; None without one."""
        if trigger is None:
            return None
        return cls(trigger.kind, trigger.source, trigger.reuses_champion_data, trigger.include_feedback)


@dataclass(frozen=True)
class DecisionInput:
    """Everything ``decide`` reads."""

    model: str
    window: Window | None
    figures: Figures
    thresholds: Thresholds
    trigger: TriggerInfo | None
    records: tuple[TriggerRecord, ...]  # the model's trigger records, oldest first
    now: dt.datetime
    given_up: tuple[str, ...] = ()  # record keys whose run this pass found failed on its last attempt


@dataclass(frozen=True)
class Failure:
    """A retrain that failed: which, how often, why, and when it is tried again (None: given up)."""

    key: str
    attempts: int
    max_attempts: int
    error: str
    retry_at: dt.datetime | None


@dataclass(frozen=True)
class Decision:
    """A pass's decision; ``request`` / ``retry_of`` are the action still to carry out."""

    outcome: Outcome
    reason: str
    wanted: bool = False  # a retrain was asked for: by this window (drift, quality) or a due retry
    why: str = ""  # what in this window asked for a retrain (the drift and quality verdicts that fired)
    alarm: bool = False  # wanted, but there is no new labelled data to retrain on
    request: RetrainRequest | None = None  # claim and start this window's retrain
    retry_of: str | None = None  # take over and start again the failed retrain of this key
    record: str | None = None  # the trigger record concerned (store key)
    attempt: int | None = None  # the attempt this pass starts (2 and more: a retry)
    failure: Failure | None = None  # for failed, failed_waiting and given_up
    run: dict[str, Any] | None = None  # the trigger's answer once started (status, run_id, version, ...)

    @property
    def retrain(self) -> bool:
        """This pass starts (or started) a retrain."""
        return self.outcome is Outcome.TRIGGERED

    @property
    def done(self) -> bool:
        """The window's decision is carried out (or final): the next window may begin after it."""
        return self.outcome not in NOT_DONE

    def to_dict(self) -> dict[str, Any]:
        """The decision as summary.json holds it."""
        f = self.failure
        return {"outcome": self.outcome.value, "reason": self.reason, "retrain": self.retrain, "wanted": self.wanted,
                "why": self.why, "alarm": self.alarm, "done": self.done, "trigger": self.record, "attempt": self.attempt,
                "run": self.run,
                "failure": None if f is None else {
                    "key": f.key, "attempts": f.attempts, "max_attempts": f.max_attempts, "error": f.error,
                    "retry_at": f.retry_at.isoformat() if f.retry_at else None}}


def skipped(figures: Figures, thresholds: Thresholds) -> Outcome | None:
    """Why the window cannot be evaluated (no_champion, no_logs, too_few_rows), or None when it can."""
    if figures.champion is None:
        return Outcome.NO_CHAMPION
    if not figures.logs:
        return Outcome.NO_LOGS
    if figures.rows < thresholds.min_rows:
        return Outcome.TOO_FEW_ROWS
    return None


def decide(i: DecisionInput) -> Decision:
    """The pass's decision (the rules are in the module docstring); pure, no store, no trigger calls."""
    f = i.figures
    fired = []
    if f.drift is not None and f.drift.fired:
        fired.append(f.drift.reason)
    if f.quality is not None and f.quality.fired:
        fired.append(f"quality degraded: {f.quality.reason}")
    why = "; ".join(fired)
    d = replace(_decide(i, why), why=why)
    if not i.given_up or d.request or d.retry_of or d.outcome in (Outcome.FAILED_WAITING, Outcome.NO_CHAMPION):
        return d
    rec = next(r for r in reversed(i.records) if r.key in i.given_up)
    error = rec.error or "failed"
    return replace(d, outcome=Outcome.GIVEN_UP, record=record_key(i.model, rec.key),
                   reason=f"{d.reason}; retrain {rec.key} failed on its last attempt ({rec.attempts}): {error}; given up",
                   failure=Failure(rec.key, rec.attempts, i.thresholds.retry_max_attempts, error, None))


def _decide(i: DecisionInput, why: str) -> Decision:
    f, t = i.figures, i.thresholds
    skip = skipped(f, t)
    if skip is Outcome.NO_CHAMPION:
        return Decision(skip, "no retrain: nothing is served, nothing to compare with")
    wanted = f"retrain wanted ({why})"
    if skip is None and why and i.trigger is None:
        return Decision(Outcome.NO_TRIGGER, f"{wanted} but no trigger is configured", wanted=True)
    base = _not_wanted(i, skip, why)  # what the pass says when it starts nothing; None: a retrain is wanted
    if i.trigger is None and base is not None:
        return base

    flying = next((r for r in reversed(i.records) if r.in_flight(i.now)), None)
    if flying is not None:
        state = (f"retrain {flying.key} is in flight and its state cannot be read ({flying.poll_error})"
                 if flying.poll_error else
                 f"a retrain is in flight (record {flying.key}, {flying.status} since {flying.created_at.isoformat()})")
        return base or Decision(Outcome.IN_FLIGHT, f"{wanted} but {state}", wanted=True,
                                record=record_key(i.model, flying.key))

    retry = pending(i.records, f.champion)
    if retry is not None and retry.waits(i.now):
        error = retry.error or "failed"
        note = f"retrain {retry.key} failed (attempt {retry.attempts}: {error}); next attempt at {retry.retry_at.isoformat()}"
        return Decision(Outcome.FAILED_WAITING, f"{base.reason if base else wanted}; {note}",
                        wanted=base.wanted if base else True, alarm=bool(base and base.alarm),
                        record=record_key(i.model, retry.key),
                        failure=Failure(retry.key, retry.attempts, t.retry_max_attempts, error, retry.retry_at))

    cooling = next((r for r in reversed(i.records) if r.cooling(i.now, t.cooldown)), None)
    if cooling is not None:
        left = int((t.cooldown - (i.now - cooling.created_at)).total_seconds() // 60) + 1
        return base or Decision(Outcome.COOLDOWN, f"{wanted} but inside the cooldown: retrain {cooling.key} started at "
                                f"{cooling.created_at.isoformat()} ({left} min left)", wanted=True)

    if retry is not None:  # an earlier window's decision still stands, even when this window is quiet
        return Decision(Outcome.TRIGGERED, f"retrying retrain {retry.key} (attempt {retry.attempts + 1}: {retry.reason})",
                        wanted=True, retry_of=retry.key, record=record_key(i.model, retry.key), attempt=retry.attempts + 1)
    if base is not None:
        return base
    if i.window is None or f.champion is None:
        raise ValueError("a retrain is wanted for a window that was not evaluated")  # skipped() rules it out
    key = Window.stamp(i.window.start)
    done = next((r for r in i.records if r.key == key), None)
    if done is not None:  # at most one retrain per window, whatever became of it
        return Decision(Outcome.DUPLICATE, f"{wanted} but window {key} already triggered one ({done.status})",
                        wanted=True, record=record_key(i.model, key))
    request = RetrainRequest(i.model, key, f.champion, i.window.to_dict(), why, f"{i.model}-retrain-{key.lower()}")
    return Decision(Outcome.TRIGGERED, why, wanted=True, request=request, record=record_key(i.model, key), attempt=1)


def _not_wanted(i: DecisionInput, skip: Outcome | None, why: str) -> Decision | None:
    """The decision when this window asks for no retrain (or for one that would learn nothing); None when it does."""
    f = i.figures
    if skip is Outcome.NO_LOGS:
        return Decision(skip, "no retrain: no prediction logs in the window")
    if skip is Outcome.TOO_FEW_ROWS:
        return Decision(skip, f"no retrain: too few rows ({f.rows} < min_rows {i.thresholds.min_rows})")
    if not why:
        drift = f.drift.reason if f.drift else "drift not tested"
        return Decision(Outcome.NO_DRIFT, f"no retrain: {drift}; quality: {f.quality.reason if f.quality else '-'}")
    if i.trigger is not None and _no_new_data(i.trigger, f):
        return Decision(Outcome.ALARM, wanted=True, alarm=True, reason=(
            f"ALARM: {why}; no retrain: there is no new labelled data (the retrain would read only "
            f"{i.trigger.source}, the champion's own training data, which can only reproduce it); waiting for labels"))
    return None


def _no_new_data(trigger: TriggerInfo, f: Figures) -> bool:
    """True when a retrain would read only what the champion was trained on (no --data, no new labels)."""
    return trigger.reuses_champion_data and not (trigger.include_feedback and f.labelled_rows > 0)
