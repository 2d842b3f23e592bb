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

Split by job: converting and encoding records is ``log_encoding``, the spill directory's files
and leases ``spill``; this module is the log itself (room, threads, counting).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from components.store import Store
from services.serving import spill
from services.serving.log_encoding import (
    Batch,
    Entry,
    Part,
    Records,
    Types,
    Unencodable,
    encode_records,
    json_line,
    part_name,
    parts_of,
    rows_of,
)
from services.serving.spill import CLAIM, SPILLED, original_name, records_in, stamp_of, tree_bytes

log = logging.getLogger("flywheel.serving")
QUARANTINE = "quarantine"
OUTCOMES = ("buffered", "flushed", "spilled", "resent", "quarantined", "dropped", "refused")
HOLDER_STOP_SECONDS = 1.0  # the service waits this long for the model holder at shutdown
_ERROR_LOG_EVERY = 60.0
# A flush frees its appends' batches for this long at a time, then lets other threads take the
# GIL: freed in one run, a request waited behind them for up to CPython's switch interval (5 ms)
# (at one client, p99 7 to 11 ms with no slices, 4 to 5 with 0.5 ms slices, 2.2 with these)
_FREE_SLICE_SECONDS = 0.0001


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
        self._buffer: list[Batch] = []
        self._lines: list[tuple[str, str, float]] = []  # quarantined, not yet spooled: (day, JSON line, since)
        self._rows = 0
        self._held: list[Part] = []  # parts neither the spill directory nor the store took
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
    def append(self, records: Records, types: Types | None = None) -> None:
        """Queue records (they must carry the TIME column), waiting up to ``append_wait_seconds`` for room.

        ``records`` is a frame or a mapping of equal-length columns (no frame needs building).
        Raises ``LogFull`` when no room comes (their request must be refused: nothing is logged),
        ``ValueError`` for columns of unequal length. Never waits on the store.
        """
        self.put(self.encode(records, types))

    def encode(self, records: Records, types: Types | None = None) -> Entry:
        """Convert records to Arrow, on the request path (quarantining those that do not convert).

        ``types`` (``log_types`` of the model's schema) fixes the columns' Arrow types, so the
        parts' schema follows the model, not the values that happen to be in one append.
        """
        rows = rows_of(records)
        if not rows:
            return Entry([], [], 0)
        batches, lines = encode_records(records, time.time(), types)
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

    def _free(self, part: Part) -> None:
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
            if CLAIM in path.name or path.name.endswith(SPILLED):
                continue
            named = path.with_name(path.name + SPILLED)
            try:
                os.rename(path, named)
            except FileNotFoundError:  # a worker beside us took it first
                continue
            key = self._key_of(named)
            self._count_spilled(key, records_in(key, named))
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
        parts = held + parts_of(self.prefix, batches, lines, self._quarantine_key)
        # The parts hold their own tables now. The appends' batches (one per request, an Arrow
        # array per column each) are dropped one at a time, in short slices: freed all at once, as
        # a list is when this frame ends, they held the GIL for about 30 ms per flush at one client,
        # and every request in flight waited through it (the service's p99 at c=1)
        until = time.perf_counter() + _FREE_SLICE_SECONDS
        while batches:
            batches.pop()
            if time.perf_counter() >= until:
                time.sleep(0)  # lets a request thread take the GIL between slices
                until = time.perf_counter() + _FREE_SLICE_SECONDS
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

    def _quarantined(self, part: Part, exc: Unencodable) -> Part:
        assert part.table is not None
        error = str(exc)
        log.error("%d %s records cannot be logged as Parquet (%s); they are quarantined as JSON lines",
                  part.records, self.kind, error)
        self.quarantined += part.records
        self.hooks.outcome("quarantined", part.records)
        text = "".join(f"{json_line(r, error)}\n" for r in part.table.to_pylist())
        return Part(self._quarantine_key(part.day, part.since), part.records, part.since, part.day, text=text.encode(),
                     unwritten=part.unwritten)

    def _may_write(self) -> bool:
        return self._deadline is None or time.monotonic() < self._deadline

    def _write_spill(self, part: Part, spilled: bool) -> bool:
        path = self.root / (part.key + (SPILLED if spilled else ""))
        used = tree_bytes(self.root)
        if used + part.size > self.spill_max_bytes:
            self._spill_failed(f"it holds {used / 1e6:.1f} MB and may hold {self.spill_max_bytes / 1e6:.1f} MB "
                               "(setting spill_max_mb)")
            return False
        try:
            spill.write_part(path, part)
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

    def _send_direct(self, part: Part) -> bool:
        if not self._store_call(self.store.write, part.key, part.encoded()):
            return False
        self._sent(part.key, part.records, resent=False)
        return True

    def _hold(self, parts: list[Part]) -> None:
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
        return spill.spilled_files([self.root / self.prefix, self.root / QUARANTINE / self.prefix], self.lease_seconds)

    def send(self, deadline: float | None = None) -> int:
        """Send spilled parts to the store under their own keys until one fails; returns records sent.

        ``deadline`` (time.monotonic) stops it starting a write after that moment.
        """
        sent = 0
        for path in self.spilled_files():
            if not self._may_write() or (deadline is not None and time.monotonic() >= deadline):
                break
            key = self._key_of(path)
            spilled = original_name(path.name).endswith(SPILLED)
            # an expired claim: its owner died or gave up, and the part waited on disk for it
            adopted = CLAIM in path.name and not spilled
            claimed = self._claim_path(key, spilled or adopted)
            try:
                os.rename(path, claimed)  # atomic: of all workers, one wins the claim
            except FileNotFoundError:
                continue
            records = records_in(key, claimed)
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
        return spill.claim_path(self.root, key, spilled, self.lease_seconds)

    def _release(self, claimed: Path, key: str) -> None:
        spill.release(self.root, claimed, key)

    def _key_of(self, path: Path) -> str:
        return spill.key_of(self.root, path)

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
                since += [t for p in base.rglob("*") if (t := stamp_of(original_name(p.name))) is not None]
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
        return f"{QUARANTINE}/{self.prefix}/date={day}/{part_name(since, 'jsonl')}"
