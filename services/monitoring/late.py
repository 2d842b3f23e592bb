"""Prediction logs that arrive late (a spill re-sent after a restart) are evaluated, not skipped.

A pass selects rows by prediction time, so rows whose file lands after their window was
evaluated would fall between windows forever. Each pass therefore records which log files
it has read (``monitoring/<model>/seen/date=YYYY-MM-DD.json``, once its decision was carried
out), and the next pass also reads, whole, every file of the last ``late_log_days`` days of
partitions that no pass has seen: its rows before the window are "late" and are evaluated
with this window. Before any pass has recorded what it saw, nothing counts as late.
"""

from __future__ import annotations

import datetime as dt
import json

from components.store import NotFound, Store

SEEN = "monitoring/{model}/seen/date={day}.json"
ATTEMPTS = 10


def _day(key: str) -> str | None:
    part = key.split("/date=")
    return part[1][:10] if len(part) > 1 else None


def late_keys(store: Store, model: str, start: dt.datetime | None, days: int) -> set[str]:
    """Log files in the ``days`` before ``start`` (and on its day) that no pass has read yet."""
    if start is None or days <= 0 or not store.list(f"monitoring/{model}/seen/"):
        return set()
    out: set[str] = set()
    first = start.astimezone(dt.UTC).date() - dt.timedelta(days=days)
    day = first
    while day <= start.astimezone(dt.UTC).date():
        keys = [k for k in store.list(f"predictions/{model}/date={day.isoformat()}/") if k.endswith(".parquet")]
        if keys:
            out |= set(keys) - _seen(store, model, day.isoformat())
        day += dt.timedelta(days=1)
    return out


def _seen(store: Store, model: str, day: str) -> set[str]:
    try:
        return set(json.loads(store.read(SEEN.format(model=model, day=day))))
    except (NotFound, ValueError):
        return set()


def mark_seen(store: Store, model: str, keys: list[str]) -> None:
    """Add ``keys`` to the seen index of their dates (conditional replace: concurrent passes add, never drop)."""
    by_day: dict[str, set[str]] = {}
    for k in keys:
        day = _day(k)
        if day:
            by_day.setdefault(day, set()).add(k)
    for day, new in by_day.items():
        index = SEEN.format(model=model, day=day)
        for _ in range(ATTEMPTS):
            try:
                current = store.read_versioned(index)
                have, etag = set(json.loads(current.data)), current.etag
            except NotFound:
                have, etag = set(), None
            if new <= have:
                break
            if store.replace(index, json.dumps(sorted(have | new)).encode(), etag):
                break
