"""Buffered, loss-free record logs: served predictions and label feedback, into the store.

    predictions/<model>/date=YYYY-MM-DD/<time>-<uuid>.parquet
    feedback/<model>/date=YYYY-MM-DD/<time>-<uuid>.parquet

Requests only append to an in-memory buffer. A background thread writes it out when it
holds ``flush_rows`` records or every ``flush_seconds``. A write that fails is retried a
few times; past that the part is spilled to local disk under the very key it would have had
in the store, and re-sent later (a spilled file is claimed by an atomic rename, so two
workers never send it twice, and re-sending writes the same key, so nothing is duplicated).
``close()`` flushes everything still buffered: on shutdown nothing served goes unlogged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from components.data import TIME
from components.store import Store

log = logging.getLogger("flywheel.serving")
Outcome = Callable[[str, int], None]  # (logged|spilled|failed, records)


class RecordLog:
    """One kind of record log (``predictions`` or ``feedback``) of one model."""

    def __init__(self, store: Store, model: str, kind: str, spill_dir: str | Path,
                 flush_rows: int = 1000, flush_seconds: float = 2.0, retries: int = 3,
                 retry_wait: float = 0.2, on_outcome: Outcome | None = None) -> None:
        self.store = store
        self.kind = kind
        self.prefix = f"{kind}/{model}"
        self.spill_dir = Path(spill_dir).expanduser().resolve() / self.prefix
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.retries = retries
        self.retry_wait = retry_wait
        self.on_outcome = on_outcome or (lambda outcome, n: None)
        self._buffer: list[pd.DataFrame] = []
        self._rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._write_lock = threading.Lock()  # one writer at a time: the thread, or close()
        self._thread: threading.Thread | None = None
        self.logged = 0
        self.spilled = 0

    # --- request path -------------------------------------------------------------------------
    def append(self, records: pd.DataFrame) -> None:
        """Queue records (they must carry the TIME column); never blocks on the store."""
        if records.empty:
            return
        with self._lock:
            self._buffer.append(records)
            self._rows += len(records)
            full = self._rows >= self.flush_rows
        if full:
            self._wake.set()

    @property
    def pending(self) -> int:
        with self._lock:
            return self._rows

    # --- background -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"flywheel-{self.kind}-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.flush()
                self.resend_spilled()
            except Exception:  # the logger must outlive any one failure
                log.exception("%s log flush failed", self.kind)

    def flush(self) -> int:
        """Write out everything buffered now; returns the number of records handled."""
        with self._write_lock:
            with self._lock:
                parts, self._buffer, self._rows = self._buffer, [], 0
            if not parts:
                return 0
            frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
            days = pd.to_datetime(frame[TIME], utc=True).dt.strftime("%Y-%m-%d")
            for day, part in frame.groupby(days.to_numpy(), sort=True):
                self._write(f"{self.prefix}/date={day}/{_part_name()}", part.reset_index(drop=True))
            return len(frame)

    def _write(self, key: str, part: pd.DataFrame) -> None:
        buf = io.BytesIO()
        part.to_parquet(buf, index=False)
        data = buf.getvalue()
        for attempt in range(self.retries):
            try:
                self.store.write(key, data)
                self.logged += len(part)
                self.on_outcome("logged", len(part))
                return
            except Exception as exc:  # any store failure: retry, then spill
                log.warning("writing %s (%d records) failed (attempt %d/%d): %s", key, len(part), attempt + 1, self.retries, exc)
                if attempt + 1 < self.retries:
                    time.sleep(self.retry_wait * (2 ** attempt))
        self._spill(key, data, len(part))

    def _spill(self, key: str, data: bytes, n: int) -> None:
        path = self.spill_dir.parent.parent / key  # spill_dir is <root>/<kind>/<model>
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            log.error("%d %s records are lost: the store and the spill directory %s both failed: %s",
                      n, self.kind, path.parent, exc)
            self.on_outcome("failed", n)
            return
        self.spilled += n
        self.on_outcome("spilled", n)
        log.warning("spilled %d %s records to %s; they are re-sent when the store answers", n, self.kind, path)

    def spilled_files(self) -> list[Path]:
        if not self.spill_dir.is_dir():
            return []
        for claimed in self.spill_dir.rglob(".*.parquet.sending-*"):
            pid = int(claimed.name.rsplit("-", 1)[1])
            if not _alive(pid):  # a worker died while sending: the file is ours to send again
                with contextlib.suppress(OSError):
                    os.rename(claimed, claimed.with_name(claimed.name[1:].rsplit(".sending-", 1)[0]))
        return sorted(p for p in self.spill_dir.rglob("*.parquet") if not p.name.startswith("."))

    def resend_spilled(self) -> int:
        """Send spilled parts to the store under their original keys; returns records sent."""
        sent = 0
        root = self.spill_dir.parent.parent
        for path in self.spilled_files():
            claimed = path.with_name(f".{path.name}.sending-{os.getpid()}")
            try:
                os.rename(path, claimed)  # atomic claim: no other worker sends this file
            except FileNotFoundError:
                continue
            key = path.relative_to(root).as_posix()
            data = claimed.read_bytes()
            try:
                self.store.write(key, data)
            except Exception as exc:
                os.rename(claimed, path)
                log.info("store still refuses %s records (%s); keeping %s spilled", self.kind, exc, key)
                return sent
            n = _rows_in(data)
            claimed.unlink()
            sent += n
            self.logged += n
            self.on_outcome("logged", n)
        return sent

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread and flush what is buffered (spilling if the store is down)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self.flush()
        with contextlib.suppress(Exception):
            self.resend_spilled()


def _part_name() -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"{now}-{uuid.uuid4().hex[:12]}.parquet"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rows_in(data: bytes) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
