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
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import Any, Protocol

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


class Trigger(Protocol):
    """Starts a retrain and reports on the runs it started."""

    kind: str

    def start(self, request: RetrainRequest) -> dict[str, Any]:
        """Start a retrain; return record fields (``status``, ``run_id``, …). Raise TriggerError if it cannot."""
        ...

    def poll(self, record: dict[str, Any]) -> dict[str, Any]:
        """The current ``status`` (and any details) of a run this trigger started."""
        ...


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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


def pending(store: Store, model: str, version: str) -> dict[str, Any] | None:
    """The latest failed retrain decided against ``version`` that is still to be retried, if any.

    A failed record of an older served version is obsolete: the champion changed since.
    """
    for rec in reversed(records(store, model)):
        if rec.get("status") == "failed" and rec.get("retry_at") and rec.get("version") == version:
            return rec
    return None


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


def blocking(store: Store, model: str, trigger: Trigger | None, cooldown: dt.timedelta, now: dt.datetime,
             retry_backoff: dt.timedelta = dt.timedelta(minutes=5), max_attempts: int = 1) -> str | None:
    """Why no retrain may start now (one in flight, or inside the cooldown), else None.

    In-flight records are polled through the trigger first, and the answer is written back,
    so a finished run stops blocking as soon as any pass notices; a run found failed gets its
    retry time like a start that failed (``failed``).
    """
    for rec in reversed(records(store, model)):
        status = rec.get("status")
        created = dt.datetime.fromisoformat(rec["created_at"])
        # a record without a run id is being started by another pass right now: in flight
        if status in IN_FLIGHT and rec.get("run_id") and trigger is not None and rec.get("trigger") == trigger.kind:
            try:
                fresh = trigger.poll(rec)
            except TriggerError as exc:
                return f"retrain {rec['key']} is in flight and its state cannot be read ({exc})"
            if fresh.get("status") == "failed":
                why = fresh.get("error") or f"run {rec['run_id']} ended {fresh.get('kfp_state', 'failed')}"
                rec = failed(store, model, rec["key"], why, now, retry_backoff, max_attempts,
                             {k: v for k, v in fresh.items() if k not in ("status", "error")})
                status = rec["status"]
            elif fresh.get("status") and fresh.get("status") != status:
                rec = update(store, model, rec["key"], fresh, now)
                status = rec["status"]
        if status in IN_FLIGHT:
            touched = dt.datetime.fromisoformat(rec.get("updated_at") or rec["created_at"])  # a retake restarts the clock
            if now - touched > STALE_AFTER:
                continue
            return f"a retrain is in flight (record {rec['key']}, {status} since {rec['created_at']})"
        if status in ("succeeded", *IN_FLIGHT) and now - created < cooldown:
            left = int((cooldown - (now - created)).total_seconds() // 60) + 1
            return f"inside the cooldown: retrain {rec['key']} started at {rec['created_at']} ({left} min left)"
    return None
