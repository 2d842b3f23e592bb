"""The retrain trigger contract and its records: at most one retrain per window.

The monitor only knows this small protocol; the two implementations (run the pipeline
locally, or start a KFP run) live in ``pipelines/triggers.py``, above the services.

Every retrain decision is a record ``triggers/<model>/<key>.json`` written with a
conditional create: two passes racing on the same window both try, one wins, the other
reports that the window was already handled. The record then carries the run's state
(started -> running -> succeeded/failed) so later passes can tell a retrain in flight or
a cooldown from a finished one.

A failed retrain is not the end of its window's decision: the record says when it may be
tried again (``retry_at``, a backoff that doubles per attempt) and a later pass takes it
over with a conditional replace on the record (``retake``), so two passes never both
restart it and never while another attempt is in flight. After ``retry_max_attempts`` the
record is given up (``status: given_up``) and says so.

The decision reads records through ``TriggerRecord`` (typed, pure predicates: in flight,
cooling down, waiting for a retry); ``refresh`` is the one step that asks the trigger about
runs in flight and writes their state back.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, runtime_checkable

from components.store import NotFound, Store

IN_FLIGHT = ("started", "running")
# A record stuck in flight this long is from a pass that died (an embedded run blocks its
# pass; a KFP run is polled): it no longer blocks retrains.
STALE_AFTER = dt.timedelta(hours=6)


class TriggerError(RuntimeError):
    """A retrain could not be started; the message says where and why."""


@dataclass(frozen=True)
class RetrainRequest:
    """What a trigger needs to start one retrain."""

    model: str
    key: str
    version: str  # the served version the decision was made against
    window: dict[str, Any]
    reason: str
    run_name: str


@runtime_checkable
class Trigger(Protocol):
    """Starts a retrain and reports on the runs it started."""

    kind: str
    # the dataset a retrain reads (named in the alarm when it holds nothing new)
    source: str
    # ``source`` is what the champion was trained on (no --data): only new labels make a retrain worth it
    reuses_champion_data: bool
    # a retrain adds the labelled production rows (feedback joined to the logged features)
    include_feedback: bool

    def start(self, request: RetrainRequest) -> dict[str, Any]:
        """Start a retrain; return record fields (``status``, ``run_id``, …). Raise TriggerError if it cannot."""
        ...

    def poll(self, record: dict[str, Any]) -> dict[str, Any]:
        """The current ``status`` (and any details) of a run this trigger started."""
        ...


@dataclass(frozen=True)
class TriggerRecord:
    """What the decision reads of one record (``triggers/<model>/<key>.json``)."""

    key: str
    status: str  # started | running | succeeded | failed | given_up
    version: str | None  # the served version the decision was made against
    trigger: str
    created_at: dt.datetime
    updated_at: dt.datetime
    attempts: int = 1
    retry_at: dt.datetime | None = None
    error: str | None = None
    run_id: str | None = None
    reason: str = ""  # why the retrain was decided
    poll_error: str | None = None  # this pass could not read the run's state from the trigger

    @classmethod
    def of(cls, body: dict[str, Any]) -> TriggerRecord:
        """The typed view of a record's JSON body."""
        created = dt.datetime.fromisoformat(body["created_at"])
        return cls(key=str(body["key"]), status=str(body.get("status")), version=body.get("version"),
                   trigger=str(body.get("trigger", "")), created_at=created,
                   updated_at=dt.datetime.fromisoformat(body["updated_at"]) if body.get("updated_at") else created,
                   attempts=int(body.get("attempts", 1)),
                   retry_at=dt.datetime.fromisoformat(body["retry_at"]) if body.get("retry_at") else None,
                   error=body.get("error"), run_id=body.get("run_id"), reason=str(body.get("reason") or ""))

    def in_flight(self, now: dt.datetime) -> bool:
        """Started or running and touched within ``STALE_AFTER`` (a retake restarts the clock).

        A record without a run id is being started by a pass right now: in flight too.
        """
        return self.status in IN_FLIGHT and now - self.updated_at <= STALE_AFTER

    def waits(self, now: dt.datetime) -> bool:
        """A failed retrain whose retry time lies ahead."""
        return self.status == "failed" and self.retry_at is not None and now < self.retry_at

    def cooling(self, now: dt.datetime, cooldown: dt.timedelta) -> bool:
        """A retrain that succeeded or is in flight, started less than ``cooldown`` ago."""
        return (self.status == "succeeded" or self.in_flight(now)) and now - self.created_at < cooldown


def pending(recs: tuple[TriggerRecord, ...] | list[TriggerRecord], version: str | None) -> TriggerRecord | None:
    """The latest failed retrain decided against ``version`` that is still to be retried, if any.

    A failed record of an older served version is obsolete: the champion changed since.
    """
    for rec in reversed(recs):
        if rec.status == "failed" and rec.retry_at is not None and rec.version == version:
            return rec
    return None


@dataclass(frozen=True)
class Refreshed:
    """The model's records after ``refresh``, and the ones it found given up."""

    records: tuple[TriggerRecord, ...]
    given_up: tuple[str, ...] = ()  # keys whose run this pass found failed on its last attempt


def refresh(store: Store, model: str, trigger: Trigger | None, now: dt.datetime,
            retry_backoff: dt.timedelta, max_attempts: int) -> Refreshed:
    """Every record of the model, oldest first, after asking the trigger about its runs in flight.

    The answers are written back, so a finished run stops blocking as soon as any pass
    notices; a run found failed gets its retry time like a start that failed (``failed``).
    A run whose state cannot be read stays in flight, with ``poll_error`` saying why.
    """
    out: list[TriggerRecord] = []
    given_up: list[str] = []
    for body in records(store, model):
        try:
            rec = TriggerRecord.of(body)
        except (KeyError, TypeError, ValueError):  # a record without its key or times: skipped like an unreadable one
            continue
        if trigger is not None and rec.status in IN_FLIGHT and rec.run_id and rec.trigger == trigger.kind:
            try:
                fresh = trigger.poll(body)
            except TriggerError as exc:
                out.append(replace(rec, poll_error=str(exc)))
                continue
            if fresh.get("status") == "failed":
                why = fresh.get("error") or f"run {rec.run_id} ended {fresh.get('kfp_state', 'failed')}"
                body = failed(store, model, rec.key, why, now, retry_backoff, max_attempts,
                              {k: v for k, v in fresh.items() if k not in ("status", "error")})
                if body["status"] == "given_up":
                    given_up.append(rec.key)
            elif fresh.get("status") and fresh.get("status") != rec.status:
                body = update(store, model, rec.key, fresh, now)
            rec = TriggerRecord.of(body)
        out.append(rec)
    return Refreshed(tuple(out), tuple(given_up))


def record_key(model: str, key: str) -> str:
    return f"triggers/{model}/{key}.json"


def claim(store: Store, request: RetrainRequest, kind: str, now: dt.datetime) -> bool:
    """Create the window's record; False when another pass already has it."""
    body = {**asdict(request), "trigger": kind, "status": "started", "attempts": 1, "created_at": now.isoformat(),
            "updated_at": now.isoformat()}
    return store.create(record_key(request.model, request.key), json.dumps(body, indent=2, default=str).encode())


def backoff(attempts: int, base: dt.timedelta) -> dt.timedelta:
    """How long after its ``attempts``-th failure a retrain may be tried again."""
    return base * (2 ** max(attempts - 1, 0))


def failed(store: Store, model: str, key: str, error: str, now: dt.datetime, base: dt.timedelta,
           max_attempts: int, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record a failed attempt and when the next one is due (or that the retrain is given up)."""
    body = json.loads(store.read(record_key(model, key)))
    attempts = int(body.get("attempts", 1))
    out = {**(fields or {}), "status": "failed", "error": error}
    if attempts >= max_attempts:
        out.update(status="given_up", retry_at=None)
    else:
        out["retry_at"] = (now + backoff(attempts, base)).isoformat()
    return update(store, model, key, out, now)


def retake(store: Store, model: str, key: str, now: dt.datetime) -> dict[str, Any] | None:
    """Take a failed record over for a new attempt; None when another pass changed it first."""
    k = record_key(model, key)
    try:
        current = store.read_versioned(k)
    except NotFound:
        return None
    body = json.loads(current.data)
    if body.get("status") != "failed":
        return None
    attempts = int(body.get("attempts", 1)) + 1
    body.update(status="started", attempts=attempts, run_id=None, retry_at=None, updated_at=now.isoformat(),
                run_name=f"{body['run_name'].split('-attempt-')[0]}-attempt-{attempts}",
                errors=[*body.get("errors", []), body.get("error")], error=None)
    if not store.replace(k, json.dumps(body, indent=2, default=str).encode(), current.etag):
        return None
    return body


def update(store: Store, model: str, key: str, fields: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """Update the state fields of a record this process owns (the create already decided the race)."""
    k = record_key(model, key)
    body = json.loads(store.read(k))
    body.update(fields)
    body["updated_at"] = now.isoformat()
    store.write(k, json.dumps(body, indent=2, default=str).encode())
    return body


def records(store: Store, model: str) -> list[dict[str, Any]]:
    """All trigger records of a model, oldest first (unreadable ones are skipped)."""
    out = []
    for k in store.list(f"triggers/{model}/"):
        if not k.endswith(".json"):
            continue
        try:
            out.append(json.loads(store.read(k)))
        except (NotFound, ValueError):
            continue
    return sorted(out, key=lambda r: r.get("created_at", ""))
