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
from services.monitoring.compaction import live_keys

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
        keys = live_keys(store, f"predictions/{model}", [day.isoformat()])
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


class Settled:
    """Which prediction log parts compaction may fold in, as the late index sees them.

    A part no pass has read yet may still hold late rows: it stays apart (so the next pass
    tells it apart) until a pass has read it, or its day is older than ``days`` (no pass
    looks for late rows there). Before any pass has recorded what it saw, nothing is late
    and every part may be folded in. The compacted files are recorded as seen before they
    are committed: their rows were all seen as parts.
    """

    def __init__(self, store: Store, model: str, days: int, now: dt.datetime) -> None:
        self.store, self.model = store, model
        self.tracking = days > 0 and bool(store.list(f"monitoring/{model}/seen/"))
        self.horizon = (now.astimezone(dt.UTC).date() - dt.timedelta(days=days)).isoformat()
        self._seen: dict[str, set[str]] = {}

    def __call__(self, key: str) -> bool:
        day = _day(key)
        if not self.tracking or day is None or day < self.horizon:
            return True
        if day not in self._seen:
            self._seen[day] = _seen(self.store, self.model, day)
        return key in self._seen[day]

    def mark(self, keys: list[str]) -> None:
        """Record compacted files as seen (only where the index is kept: recording starts it)."""
        if self.tracking:
            mark_seen(self.store, self.model, keys)
