"""Loss-free record logs: served predictions and label feedback, into the store.

    predictions/<model>/date=YYYY-MM-DD/<time>-<uuid>.parquet
    feedback/<model>/date=YYYY-MM-DD/<time>-<uuid>.parquet
    quarantine/<kind>/<model>/date=YYYY-MM-DD/<time>-<uuid>.jsonl    records Parquet cannot hold

The life of a record:

1. ``append`` (the request path) converts the columns it is handed (a frame, or a mapping of
   columns) to Arrow at once. An append that does not convert is converted record by record,
   and a record that still does not is quarantined by itself: kept as a JSON line, never
   dropped, never taking others with it. The append is let in only while the worker holds
   fewer than ``unwritten_limit`` records not yet written to a file; else it waits in line
   for room, up to ``append_wait_seconds``, and is refused (``LogFull``: the service answers
   503) when none comes. That bounds what a SIGKILL can lose (``sigkill_loss_bound``).
2. The spooler thread writes the buffer out every ``flush_seconds``, or as soon as it holds
   ``flush_rows`` records: one Parquet part per day and Arrow schema, encoded straight into a
   file in the spill directory under the very key it gets in the store. A part whose table
   Parquet has no column for (a type only Arrow holds) is quarantined as JSON lines instead.
   It touches only local disk, whatever the store does.
3. The sender thread moves spilled parts into the store (``Store.move_file``: a rename when a
   local store shares the spill directory's filesystem, else one upload, then the unlink): its
   own, those of other workers on the same directory, and those a killed process left. It
   claims a part by renaming it to ``.<name>.claim-<token>-<expiry>``: a unique token and a
   lease, so a part whose owner died is sent again once the lease ends, and never while its
   owner may still be sending it. Sending again writes the same key, so nothing is ever
   stored twice.
4. When the spill directory is full (or over ``spill_max_bytes``) parts are sent to the store
   directly; when the store refuses too they wait in memory, up to ``max_buffer_rows``
   records, outside the SIGKILL bound. The error is logged and counted; requests are served
   all along.
5. ``close`` (SIGTERM) spools what is buffered and sends what it can before a deadline (see
   ``close_path_seconds``); what is left stays spilled for the next server on that directory.

Counting (the ``outcome`` hooks, summed over the workers of a pod by Prometheus): a part that
waits on disk for the store carries ``.spilled`` at the end of its file name. The worker that
names it so counts its records ``spilled``, once: the spooler writing it while the store
refuses, the sender whose send failed, or whoever takes over a part a dead process left.
Whoever sends a part counts it ``resent`` if its name says spilled, else ``flushed``. So over
the workers on one spill directory ``buffered = flushed + resent + quarantined + dropped`` and
``spilled = resent`` once the directory is empty and the buffers are written, whichever worker
spilled a part and whichever sent it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.data import REQUEST_ID, TIME
from components.store import Store

log = logging.getLogger("flywheel.serving")
QUARANTINE = "quarantine"
OUTCOMES = ("buffered", "flushed", "spilled", "resent", "quarantined", "dropped", "refused")
HOLDER_STOP_SECONDS = 1.0  # the service waits this long for the model holder at shutdown
_CLAIM = ".claim-"
_TMP = ".tmp-"
_SPILLED = ".spilled"  # the end of a spilled part's file name: whoever sends it counts it resent
_EXTENSIONS = (".parquet", ".jsonl", f".parquet{_SPILLED}", f".jsonl{_SPILLED}")
_STAMP = "%Y%m%dT%H%M%S%f"
_ERROR_LOG_EVERY = 60.0
_WRITE_BUFFER = 1 << 20  # bytes: a part is written to its spill file a MiB at a time


class LogHooks(Protocol):
    """Where a log reports what becomes of its records (metrics in the service)."""

    def outcome(self, outcome: str, records: int) -> None: ...
    def spill_error(self) -> None: ...
    def lag(self, seconds: float) -> None: ...


class NoHooks:
    """Reports nothing."""

    def outcome(self, outcome: str, records: int) -> None:
        pass

    def spill_error(self) -> None:
        pass

    def lag(self, seconds: float) -> None:
        pass


# What ``append`` takes: a frame, or columns of equal length (numpy arrays, pandas or Arrow arrays, lists)
Records = Union[pd.DataFrame, Mapping[str, Any]]


@dataclass
class _Batch:
    day: str
    batch: pa.RecordBatch
    since: float  # wall time it was appended


@dataclass
class Entry:
    """Records converted for the log (``RecordLog.encode``), not yet queued."""

    batches: list[_Batch]
    lines: list[tuple[str, str, float]]  # quarantined records: (day, JSON line, since)
    rows: int  # every record, the quarantined ones included


@dataclass
class _Part:
    """One file of the log: a Parquet part (a table, encoded as it is written) or quarantine lines."""

    key: str
    records: int
    since: float  # wall time of its oldest record
    day: str
    table: pa.Table | None = None  # a Parquet part
    text: bytes = b""  # a quarantine part: JSON lines
    unwritten: bool = field(default=True, compare=False)  # its records count against the log's room

    @property
    def quarantine(self) -> bool:
        return self.table is None

    @property
    def size(self) -> int:
        """Bytes it takes on disk, estimated before it is written (a table's size in memory)."""
        return len(self.text) if self.table is None else self.table.nbytes

    def write(self, sink: pa.NativeFile) -> None:
        """Write the part to ``sink``; raises ``Unencodable`` when Parquet cannot hold the table."""
        if self.table is None:
            sink.write(self.text)
        else:
            _write_parquet(self.table, sink)

    def encoded(self) -> bytes:
        """The part's file, in memory (for a store write when the spill directory refuses it)."""
        out = pa.BufferOutputStream()
        self.write(out)
        return out.getvalue().to_pybytes()


class Unencodable(Exception):
    """Parquet cannot hold a part's table (a type it has no column for)."""


class LogFull(Exception):
    """No room came for an append within its wait (or the log is closed): its records are not logged."""


def close_path_seconds(log_close_seconds: float, log_write_timeout_seconds: float) -> float:
    """Worst case from SIGTERM to exit of the serving process, in seconds.

    Shutdown waits up to ``HOLDER_STOP_SECONDS`` for the model holder, then the logs send to
    the store until their deadline (``log_close_seconds``); a write started just before it
    may take one more connect and read timeout. The pod's grace period must be longer.
    """
    return HOLDER_STOP_SECONDS + log_close_seconds + 2 * log_write_timeout_seconds


def unwritten_limit(flush_rows: int) -> int:
    """Records a worker may hold before an append waits: a buffer being written and the next one filling."""
    return 2 * flush_rows


def sigkill_loss_bound(flush_rows: int, largest_append: int) -> int:
    """Most records one worker can lose to a SIGKILL: what it holds in memory, not yet in a file.

    An append is let in only while the worker holds fewer than ``unwritten_limit`` such
    records, so it never holds more than that, less one, plus one append (one model batch or
    one ``/predict_many`` request). Parts neither the spill directory nor the store takes
    (``max_buffer_rows``) are outside this bound.
    """
    return unwritten_limit(flush_rows) - 1 + largest_append


class RecordLog:
    """One kind of record log (``predictions`` or ``feedback``) of one model."""

    def __init__(self, store: Store, model: str, kind: str, spill_dir: str | Path,
                 flush_rows: int = 1000, flush_seconds: float = 2.0, *, lease_seconds: float = 120.0,
                 spill_max_bytes: int = 1 << 30, max_buffer_rows: int = 200_000,
                 append_wait_seconds: float = 2.0, hooks: LogHooks | None = None) -> None:
        self.store = store
        self.kind = kind
        self.prefix = f"{kind}/{model}"
        self.root = Path(spill_dir).expanduser().resolve()
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.lease_seconds = lease_seconds
        self.spill_max_bytes = spill_max_bytes
        self.max_buffer_rows = max_buffer_rows
        self.append_wait_seconds = append_wait_seconds
        self.limit = unwritten_limit(flush_rows)
        self.hooks: LogHooks = hooks or NoHooks()
        self._buffer: list[_Batch] = []
        self._lines: list[tuple[str, str, float]] = []  # quarantined, not yet spooled: (day, JSON line, since)
        self._rows = 0
        self._held: list[_Part] = []  # parts neither the spill directory nor the store took
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # signalled whenever records reach a file
        self._unwritten = 0  # records let in and not yet in a file (buffered, or being written)
        self._line: deque[object] = deque()  # appends waiting for room, first come first in
        self._closed = False
        self._deadline: float | None = None  # set by close(): no store write starts after it
        self._spool_wake = threading.Event()
        self._send_wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._spill_error_logged = -math.inf
        self._spill_failing = False
        self._store_failing = False
        self.logged = 0  # records in the store (this process)
        self.spilled = 0  # records this process found waiting for the store (see the module docstring)
        self.quarantined = 0
        self.dropped = 0

    # --- request path -----------------------------------------------------------------------
    def append(self, records: Records) -> None:
        """Queue records (they must carry the TIME column), waiting up to ``append_wait_seconds`` for room.

        ``records`` is a frame or a mapping of equal-length columns (no frame needs building).
        Raises ``LogFull`` when no room comes (their request must be refused: nothing is logged),
        ``ValueError`` for columns of unequal length. Never waits on the store.
        """
        self.put(self.encode(records))

    def encode(self, records: Records) -> Entry:
        """Convert records to Arrow, on the request path (quarantining those that do not convert)."""
        rows = _rows_of(records)
        if not rows:
            return Entry([], [], 0)
        batches, lines = _encode(records, time.time())
        return Entry(batches, lines, rows)

    def put(self, entry: Entry, wait: float | None = None) -> None:
        """Queue an encoded entry, waiting in line up to ``wait`` seconds (``append_wait_seconds``) for room.

        Raises ``LogFull`` when no room comes; its records are counted ``refused``.
        """
        wait = self.append_wait_seconds if wait is None else wait
        if self._put(entry, wait):
            return
        self.hooks.outcome("refused", entry.rows)
        if self._closed:
            raise LogFull(f"the {self.kind} log is closed: the server is shutting down")
        raise LogFull(f"the {self.kind} log of this worker holds {self.limit} records not yet written out "
                      f"(2 x log_flush_rows) and none were written within {wait:g} s (log_append_wait_seconds); "
                      "retry later")

    def offer(self, entry: Entry) -> bool:
        """Queue an encoded entry if there is room now (and nobody waits for it); never waits."""
        return self._put(entry, 0.0)

    def _put(self, entry: Entry, wait: float) -> bool:
        if not entry.rows:
            return True
        with self._lock:
            if not self._wait_for_room(wait):
                return False
            self._unwritten += entry.rows
            self._buffer += entry.batches
            self._lines += entry.lines
            self._rows += sum(b.batch.num_rows for b in entry.batches)
            full = self._rows + len(self._lines) >= self.flush_rows
        self.hooks.outcome("buffered", entry.rows)
        if entry.lines:
            self.quarantined += len(entry.lines)
            self.hooks.outcome("quarantined", len(entry.lines))
        if full:
            self._spool_wake.set()
        return True

    def _wait_for_room(self, wait: float) -> bool:
        """With the lock held: True once this append may go in; it waits behind those already waiting."""
        if self._closed:
            return False
        if not self._line and self._unwritten < self.limit:
            return True
        if wait <= 0:
            return False
        me = object()
        self._line.append(me)
        deadline = time.monotonic() + wait
        try:
            while not (self._line[0] is me and self._unwritten < self.limit):
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._room.wait(left)
            return not self._closed
        finally:
            self._line.remove(me)
            self._room.notify_all()  # the next in line may fit as well

    def _free(self, part: _Part) -> None:
        """A part's records are in a file, or held outside the bound: they no longer count against the room."""
        if part.unwritten:
            part.unwritten = False
            with self._lock:
                self._unwritten -= part.records
                self._room.notify_all()

    @property
    def unwritten(self) -> int:
        """Records let in and not yet in a file: what a SIGKILL would lose now (held parts aside)."""
        return self._unwritten

    @property
    def waiting(self) -> int:
        """Appends waiting for room."""
        return len(self._line)

    @property
    def pending(self) -> int:
        """Records in memory: buffered, or held because neither disk nor store took them."""
        with self._lock:
            return self._rows + len(self._lines) + sum(p.records for p in self._held)

    # --- background -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the spooler and the sender; parts already on disk were left by an earlier process: spilled."""
        for path in self.spilled_files():
            if _CLAIM in path.name or path.name.endswith(_SPILLED):
                continue
            named = path.with_name(path.name + _SPILLED)
            try:
                os.rename(path, named)
            except FileNotFoundError:  # a worker beside us took it first
                continue
            key = self._key_of(named)
            self._count_spilled(key, _records_in(key, named))
        for name, loop in (("spool", self._spool_loop), ("send", self._send_loop)):
            t = threading.Thread(target=loop, name=f"flywheel-{self.kind}-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _spool_loop(self) -> None:
        while not self._stop.is_set():
            self._spool_wake.wait(self.flush_seconds)
            self._spool_wake.clear()
            if self._stop.is_set():
                break
            try:
                if self.spool():
                    self._send_wake.set()
            except Exception:  # the log must outlive any one failure
                log.exception("%s log: spooling failed", self.kind)

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._send_wake.wait(self.flush_seconds)
            self._send_wake.clear()
            if self._stop.is_set():
                break
            try:
                self.send()
                self.hooks.lag(self.lag_seconds())
            except Exception:
                log.exception("%s log: sending failed", self.kind)

    # --- spooling: memory -> spill directory --------------------------------------------------
    def spool(self) -> int:
        """Write the buffer to the spill directory (or, if it is full, to the store); returns records."""
        with self._lock:
            batches, self._buffer, self._rows = self._buffer, [], 0
            lines, self._lines = self._lines, []
            held, self._held = self._held, []
        parts = held + _parts(self.prefix, batches, lines, self._quarantine_key)
        done = i = 0
        try:
            while i < len(parts):
                part = parts[i]
                try:
                    # written while the store refuses: it waits on disk for the store
                    spilled = self._store_failing
                    if self._write_spill(part, spilled):
                        if spilled:
                            self._count_spilled(part.key, part.records)
                    elif not (self._may_write() and self._send_direct(part)):
                        self._hold(parts[i:])  # the store refuses as well: keep the rest, in order
                        break
                except Unencodable as exc:  # its records are kept as JSON lines instead
                    parts[i] = self._quarantined(part, exc)
                    continue
                self._free(part)
                done += part.records
                i += 1
        finally:
            for part in parts:  # held (outside the bound), or cut short by an error
                self._free(part)
        return done

    def _quarantined(self, part: _Part, exc: Unencodable) -> _Part:
        assert part.table is not None
        error = str(exc)
        log.error("%d %s records cannot be logged as Parquet (%s); they are quarantined as JSON lines",
                  part.records, self.kind, error)
        self.quarantined += part.records
        self.hooks.outcome("quarantined", part.records)
        text = "".join(f"{_json_line(r, error)}\n" for r in part.table.to_pylist())
        return _Part(self._quarantine_key(part.day, part.since), part.records, part.since, part.day, text=text.encode(),
                     unwritten=part.unwritten)

    def _may_write(self) -> bool:
        return self._deadline is None or time.monotonic() < self._deadline

    def _write_spill(self, part: _Part, spilled: bool) -> bool:
        path = self.root / (part.key + (_SPILLED if spilled else ""))
        used = _tree_bytes(self.root)
        if used + part.size > self.spill_max_bytes:
            self._spill_failed(f"it holds {used / 1e6:.1f} MB and may hold {self.spill_max_bytes / 1e6:.1f} MB "
                               "(setting spill_max_mb)")
            return False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP}", dir=path.parent)
            os.close(fd)
            try:
                # encoded straight into the file, a MiB at a time: a part built in memory first
                # and written in one call took 17 to 100 ms for 100,000 rows (fresh pages for the
                # copy, one 11 MB write), this 15 to 16 ms
                with pa.OSFile(tmp, "wb") as raw, pa.BufferedOutputStream(raw, _WRITE_BUFFER) as f:
                    part.write(f)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            self._spill_failed(exc.strerror or str(exc))
            return False
        if self._spill_failing:
            log.warning("spill directory %s takes %s parts again", self.root, self.kind)
            self._spill_failing = False
        return True

    def _spill_failed(self, reason: str) -> None:
        self.hooks.spill_error()
        self._spill_failing = True
        now = time.monotonic()
        if now - self._spill_error_logged >= _ERROR_LOG_EVERY:
            self._spill_error_logged = now
            log.error("spill directory %s cannot take %s records: %s; they go to the store directly, or wait in "
                      "memory (%d now, at most %d: setting log_max_buffer_rows) while the store refuses them",
                      self.root, self.kind, reason, self.pending, self.max_buffer_rows)

    def _send_direct(self, part: _Part) -> bool:
        if not self._store_call(self.store.write, part.key, part.encoded()):
            return False
        self._sent(part.key, part.records, resent=False)
        return True

    def _hold(self, parts: list[_Part]) -> None:
        with self._lock:
            self._held = parts + self._held
            over = sum(p.records for p in self._held) - self.max_buffer_rows
            while over > 0 and self._held:
                lost = self._held.pop(0)  # the oldest goes first
                over -= lost.records
                self.dropped += lost.records
                self.hooks.outcome("dropped", lost.records)
                log.error("%d %s records are lost: neither the store nor the spill directory %s takes them and "
                          "memory holds at most %d (setting log_max_buffer_rows)",
                          lost.records, self.kind, self.root, self.max_buffer_rows)

    # --- sending: spill directory -> store --------------------------------------------------------
    def spilled_files(self) -> list[Path]:
        """Spilled parts of this log that nobody holds a live claim on, oldest first."""
        now = time.time()
        out = []
        for base in (self.root / self.prefix, self.root / QUARANTINE / self.prefix):
            if not base.is_dir():
                continue
            for p in base.rglob("*"):
                name = p.name
                if not name.startswith("."):
                    if name.endswith(_EXTENSIONS):
                        out.append(p)
                elif _CLAIM in name:
                    if _claim_expiry(name) < now:  # its owner died or gave up: ours to send
                        out.append(p)
                elif _TMP in name:
                    with contextlib.suppress(OSError):
                        if p.stat().st_mtime < now - self.lease_seconds:  # a write cut short by a crash
                            p.unlink()
        return sorted(out, key=lambda p: _original_name(p.name))

    def send(self, deadline: float | None = None) -> int:
        """Send spilled parts to the store under their own keys until one fails; returns records sent.

        ``deadline`` (time.monotonic) stops it starting a write after that moment.
        """
        sent = 0
        for path in self.spilled_files():
            if not self._may_write() or (deadline is not None and time.monotonic() >= deadline):
                break
            key = self._key_of(path)
            spilled = _original_name(path.name).endswith(_SPILLED)
            # an expired claim: its owner died or gave up, and the part waited on disk for it
            adopted = _CLAIM in path.name and not spilled
            claimed = self._claim_path(key, spilled or adopted)
            try:
                os.rename(path, claimed)  # atomic: of all workers, one wins the claim
            except FileNotFoundError:
                continue
            records = _records_in(key, claimed)
            if adopted:
                self._count_spilled(key, records)
            if not self._store_call(self.store.move_file, claimed, key):  # refused: the part is still there
                self._release(claimed, key)
                if not (spilled or adopted):
                    self._count_spilled(key, records)
                break
            self._sent(key, records, resent=spilled or adopted)
            sent += records
        return sent

    def _count_spilled(self, key: str, records: int) -> None:
        """Records the store did not take in time, now named spilled on disk (counted once, by whoever named them)."""
        if key.startswith(f"{QUARANTINE}/"):  # counted quarantined, and only that
            return
        self.spilled += records
        self.hooks.outcome("spilled", records)

    def _sent(self, key: str, records: int, resent: bool) -> None:
        if key.startswith(f"{QUARANTINE}/"):
            return
        self.logged += records
        self.hooks.outcome("resent" if resent else "flushed", records)

    def _store_call(self, call: Any, *args: Any) -> bool:
        """``store.write`` or ``store.move_file``: False (logged once per outage) if the store refuses."""
        try:
            call(*args)
        except Exception as exc:  # noqa: BLE001 - the sender thread outlives any store failure (S3's errors, a timeout, the disk): the part stays spilled and is re-sent
            if not self._store_failing:
                log.warning("the store refuses %s records (%s); they stay spilled in %s and are re-sent",
                            self.kind, exc, self.root)
            self._store_failing = True
            return False
        if self._store_failing:
            log.info("the store takes %s records again", self.kind)
            self._store_failing = False
        return True

    def _claim_path(self, key: str, spilled: bool) -> Path:
        path = self.root / (key + (_SPILLED if spilled else ""))
        expiry = int(time.time() + self.lease_seconds) + 1
        return path.with_name(f".{path.name}{_CLAIM}{uuid.uuid4().hex}-{expiry}")

    def _release(self, claimed: Path, key: str) -> None:
        """Give a claimed part back, named spilled: the store refused it."""
        with contextlib.suppress(FileNotFoundError):
            os.rename(claimed, self.root / (key + _SPILLED))

    def _key_of(self, path: Path) -> str:
        name = _original_name(path.name).removesuffix(_SPILLED)
        return (path.parent / name).relative_to(self.root).as_posix()

    # --- both --------------------------------------------------------------------------------------
    def flush(self, deadline: float | None = None) -> int:
        """Spool the buffer, then send what is spilled; returns the records sent."""
        self.spool()
        return self.send(deadline)

    def lag_seconds(self) -> float:
        """Age of the oldest record not yet in the store (0 when everything is there)."""
        with self._lock:
            since = [b.since for b in self._buffer[:1]] + [s for _, _, s in self._lines[:1]]
            since += [min(p.since for p in self._held)] if self._held else []
        for base in (self.root / self.prefix, self.root / QUARANTINE / self.prefix):
            if base.is_dir():
                since += [t for p in base.rglob("*") if (t := _stamp_of(_original_name(p.name))) is not None]
        return max(0.0, time.time() - min(since)) if since else 0.0

    def close(self, seconds: float = 15.0) -> None:
        """Stop the threads, spool what is buffered and send until ``seconds`` have passed.

        Appends after this (and those still waiting for room) are refused with ``LogFull``.
        """
        deadline = time.monotonic() + seconds
        self._deadline = deadline
        with self._lock:
            self._closed = True
            self._room.notify_all()
        self._stop.set()
        self._spool_wake.set()
        self._send_wake.set()
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self.flush(deadline)
        lost = self.pending
        if lost:  # neither the spill directory nor the store took these: they end with us
            with self._lock:
                self._held, self._buffer, self._lines, self._rows, self._unwritten = [], [], [], 0, 0
            self.dropped += lost
            self.hooks.outcome("dropped", lost)
            log.error("%d %s records are lost at shutdown: neither the store nor the spill directory %s took them",
                      lost, self.kind, self.root)
        left = [p for p in self.spilled_files() if self._key_of(p).endswith(".parquet")]
        if left:
            log.warning("%d %s parts stay spilled in %s: a server started on this spill directory sends them "
                        "(on an emptyDir they are lost with the pod)", len(left), self.kind, self.root)
        self.hooks.lag(self.lag_seconds())

    def _quarantine_key(self, day: str, since: float) -> str:
        return f"{QUARANTINE}/{self.prefix}/date={day}/{_part_name(since, 'jsonl')}"


# --- encoding --------------------------------------------------------------------------------------

def _rows_of(records: Records) -> int:
    """Records in an append; columns of unequal length are the caller's error, refused before anything is queued."""
    if isinstance(records, pd.DataFrame):
        return len(records)
    lengths = {name: len(values) for name, values in records.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns of unequal length cannot be logged: {lengths}")
    return next(iter(lengths.values()), 0)


def _encode(records: Records, now: float) -> tuple[list[_Batch], list[tuple[str, str, float]]]:
    """Arrow batches of the records; a record that cannot be converted becomes a quarantined JSON line."""
    try:
        return [_Batch(day, batch, now) for day, batch in _batches(records)], []
    except Exception:  # noqa: BLE001 - some record does not convert: find which, keep the others
        pass
    if not isinstance(records, pd.DataFrame):  # the slow path works on a frame, built only here
        records = pd.DataFrame({k: _pandas_column(v) for k, v in records.items()})
    batches, lines = [], []
    for i in range(len(records)):
        row = records.iloc[i:i + 1]
        try:
            batches += [_Batch(day, batch, now) for day, batch in _batches(row)]
        except Exception as exc:  # noqa: BLE001 - this record alone is quarantined
            line = _json_line({str(k): v for k, v in row.iloc[0].to_dict().items()}, f"{type(exc).__name__}: {exc}")
            log.error("a record cannot be logged as Parquet (%s: %s); it is quarantined by itself: %s",
                      type(exc).__name__, exc, line[:300])
            lines.append((_day_of(row), line, now))
    return batches, lines


def _batches(records: Records) -> list[tuple[str, pa.RecordBatch]]:
    # column by column: about twice as fast as from_pandas, which builds pandas metadata we never read
    columns = records.items() if not isinstance(records, pd.DataFrame) else ((c, records[c]) for c in records.columns)
    names, arrays = [], []
    for name, values in columns:
        names.append(str(name))
        arrays.append(_arrow(values))
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    times = batch.column(TIME)
    if pa.types.is_timestamp(times.type):
        span = pc.min_max(times)
        first, last = span["min"].as_py(), span["max"].as_py()
        if first is not None and _utc_day(first) == _utc_day(last):  # the usual case: one request, one time
            return [(_utc_day(first), batch)]
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")  # a record without a time is today's
    days = pd.to_datetime(pd.Series(_pandas_column(records[TIME])), utc=True).dt.strftime("%Y-%m-%d").fillna(today).to_numpy()
    return [(day, batch.filter(pa.array(days == day))) for day in sorted(set(days))]


def _arrow(values: Any) -> pa.Array:
    """A column as Arrow, NaN and None as null (``from_pandas``).

    A float numpy column is wrapped without a copy, its NaN found with numpy: Arrow's own
    NaN scan cost 0.2 ms per 100k values, ten times numpy's, for each of a request's columns.
    """
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, np.ndarray) and values.dtype.kind == "f" and values.ndim == 1:
        null = np.isnan(values)
        return pa.array(values, mask=null) if null.any() else pa.array(values)
    return pa.array(values, from_pandas=True)


def _pandas_column(values: Any) -> Any:
    """A column as a pandas array or a plain sequence: no index to align on, Arrow arrays kept Arrow-backed."""
    if isinstance(values, pa.Array):
        return pd.arrays.ArrowExtensionArray(values)
    if isinstance(values, pd.Series):
        return values.array
    return values


def _utc_day(t: dt.datetime) -> str:
    return (t.astimezone(dt.UTC) if t.tzinfo else t).strftime("%Y-%m-%d")


def _day_of(row: pd.DataFrame) -> str:
    try:
        return pd.to_datetime(row[TIME], utc=True).iloc[0].strftime("%Y-%m-%d")
    except Exception:  # noqa: BLE001 - a record with an odd time still gets a day
        return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


def _json_line(record: dict[str, Any], error: str) -> str:
    """A quarantined record: the record as JSON, with why it could not be logged as Parquet."""
    return json.dumps({"error": error, "record": record}, default=_plain, allow_nan=True)


def _plain(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if hasattr(v, "item"):
        with contextlib.suppress(Exception):
            return v.item()
    return repr(v)


def _parts(prefix: str, batches: list[_Batch], lines: list[tuple[str, str, float]],
           quarantine_key: Any) -> list[_Part]:
    """One Parquet part per (day, schema) and one quarantine part per day, oldest first."""
    groups: dict[tuple[str, pa.Schema], list[_Batch]] = {}
    for b in batches:
        groups.setdefault((b.day, b.batch.schema), []).append(b)
    parts = []
    for (day, _), group in groups.items():
        since = min(b.since for b in group)
        table = pa.Table.from_batches([b.batch for b in group])
        parts.append(_Part(f"{prefix}/date={day}/{_part_name(since, 'parquet')}", table.num_rows, since, day, table=table))
    by_day: dict[str, list[tuple[str, float]]] = {}
    for day, line, since in lines:
        by_day.setdefault(day, []).append((line, since))
    for day, items in by_day.items():
        since = min(s for _, s in items)
        parts.append(_Part(quarantine_key(day, since), len(items), since, day,
                           text="".join(f"{line}\n" for line, _ in items).encode()))
    return sorted(parts, key=lambda p: p.since)


def _write_parquet(table: pa.Table, sink: pa.NativeFile) -> None:
    """The table as one Parquet file into ``sink``; ``Unencodable`` if Parquet has no column for a type."""
    # dictionary-encode text columns only: unique doubles (features, probabilities) gain nothing
    # from a dictionary and it was half the cost of writing a large part; nor do request ids,
    # one per record (the writer builds the dictionary, then falls back to plain)
    text = [f.name for f in table.schema
            if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)) and f.name != REQUEST_ID]
    # min/max statistics for the columns the log adds (time, version, prediction: what queries
    # filter on), not for each feature: they were a seventh of the cost of a part of doubles
    stats = [name for name in table.column_names if name.startswith("_")]
    try:
        pq.write_table(table, sink, use_dictionary=text, compression=_codecs(table), write_statistics=stats)
    except OSError:  # the sink's: the disk, not the records
        raise
    except Exception as exc:  # Parquet refuses the table: say so, as one kind of error
        raise Unencodable(f"{type(exc).__name__}: {exc}") from exc


_PROBE_BYTES = 64 << 10  # the sample of a column's values that decides its codec
_WORTH_COMPRESSING = 0.9  # snappy must take at least 10% off the sample


def _codecs(table: pa.Table) -> dict[str, str]:
    """Per column: snappy where a sample of its values shrinks, none where it would not.

    Measured values (a price, a count, a category) shrink two to five times; noise-like doubles
    (continuous measurements, embeddings) do not shrink at all, and compressing them anyway was
    a fifth of the cost of writing a part (100,000 rows of 13 such doubles: 19 ms, 16 with this).
    """
    return {name: "snappy" if _shrinks(column) else "none" for name, column in zip(table.column_names, table.columns)}


def _shrinks(column: pa.ChunkedArray) -> bool:
    chunk = next((c for c in column.chunks if len(c)), None)
    values = chunk.buffers()[-1] if chunk is not None else None  # the values; for text, the characters
    if values is None or values.size < 4096:  # too little to matter either way
        return True
    sample = values.slice(0, min(values.size, _PROBE_BYTES))
    return pa.compress(sample, "snappy", asbytes=False).size <= _WORTH_COMPRESSING * sample.size


# --- names -------------------------------------------------------------------------------------------

def _part_name(since: float, ext: str) -> str:
    stamp = dt.datetime.fromtimestamp(since, dt.UTC).strftime(_STAMP)
    return f"{stamp}-{uuid.uuid4().hex[:12]}.{ext}"


def _original_name(name: str) -> str:
    if name.startswith(".") and _CLAIM in name:
        return name[1:].rsplit(_CLAIM, 1)[0]
    return name


def _claim_expiry(name: str) -> float:
    try:
        return float(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0.0  # a claim name we cannot read is treated as expired


def _stamp_of(name: str) -> float | None:
    if name.startswith("."):
        return None
    try:
        return dt.datetime.strptime(name[:21], _STAMP).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def _tree_bytes(root: Path) -> int:
    total = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            with contextlib.suppress(OSError):
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                else:
                    total += e.stat(follow_symlinks=False).st_size
    return total


def _records_in(key: str, path: Path) -> int:
    """Records in a spilled part: the lines of a quarantine file, the rows in a Parquet footer."""
    try:
        if key.endswith(".jsonl"):
            return path.read_bytes().count(b"\n")
        return pq.read_metadata(path).num_rows
    except Exception:  # noqa: BLE001 - a part we cannot read is still sent; it counts as none
        return 0
