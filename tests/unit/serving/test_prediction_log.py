"""The prediction log without HTTP: spooling, spilling, claims, quarantine, a full spill directory, close."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.data import TIME, Column, Schema
from components.store import LocalStore
from services.serving.log_encoding import log_types
from services.serving.prediction_log import QUARANTINE, LogFull, RecordLog, sigkill_loss_bound

ID = "_request_id"


class FlakyStore(LocalStore):
    """A real local store whose writes fail while ``down`` is set (or hang for ``hang`` seconds).

    With ``permits`` set, each write first takes one: the store is as slow as the test makes it.
    ``rows`` counts the Parquet rows written, under ``lock``.
    """

    down = False
    hang = 0.0

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes: Counter[str] = Counter()
        self.permits: threading.Semaphore | None = None
        self.lock = threading.Lock()
        self.rows = 0

    def _take(self, key: str) -> None:
        if self.permits is not None:
            self.permits.acquire()
        if self.hang:
            time.sleep(self.hang)
        if self.down:
            raise OSError("store is down")
        self.writes[key] += 1

    def write(self, key: str, data: bytes) -> None:
        self._take(key)
        with self.lock:
            super().write(key, data)
            if key.endswith(".parquet"):
                self.rows += pq.read_metadata(pa.BufferReader(data)).num_rows

    def move_file(self, path: str | Path, key: str) -> None:
        self._take(key)
        super().move_file(path, key)


class Outcomes:
    """Hooks that remember what they were told."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.spill_errors = 0
        self.lags: list[float] = []

    def outcome(self, outcome: str, records: int) -> None:
        self.counts[outcome] += records

    def spill_error(self) -> None:
        self.spill_errors += 1

    def lag(self, seconds: float) -> None:
        self.lags.append(seconds)


def _records(n: int, start: int = 0, **extra: object) -> pd.DataFrame:
    return pd.DataFrame({ID: [f"r{i}" for i in range(start, start + n)], TIME: pd.Timestamp.now(tz="UTC"),
                         "x": np.arange(n, dtype=float), **extra})


def _logged(store: LocalStore) -> list[str]:
    keys = [k for k in store.list("predictions/m/") if k.endswith(".parquet")]
    return sorted(pd.concat([pd.read_parquet(store.url(k)) for k in keys])[ID]) if keys else []


def _until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def _ids(*ranges: range) -> list[str]:
    return sorted(f"r{i}" for r in ranges for i in r)


def _log(store: LocalStore, spill: Path, **kw: object) -> RecordLog:
    kw = {"flush_rows": 10**6, "flush_seconds": 3600, **kw}
    return RecordLog(store, "m", "predictions", spill, **kw)  # type: ignore[arg-type]


def test_log_flushes_by_size_and_by_time(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    log = _log(store, tmp_path / "spill", flush_rows=100, flush_seconds=3.0)
    log.start()
    start = time.monotonic()
    log.append(_records(150))  # over the size: spooled and sent at once
    assert _until(lambda: len(_logged(store)) == 150, 2.0)
    log.append(_records(10, 150))  # under the size: by time, flush_seconds after the last spool
    assert _until(lambda: len(_logged(store)) == 160, 8.0)
    assert time.monotonic() - start >= 3.0, "the rows under the size waited for flush_seconds"
    log.close()
    assert all("/date=" in k for k in store.list("predictions/m/"))
    assert not list((tmp_path / "spill").rglob("*.parquet")), "sent parts leave the spill directory"


def test_log_spills_when_the_store_fails_and_resends_once(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "store")
    hooks = Outcomes()
    log = _log(store, tmp_path / "spill", hooks=hooks)
    store.down = True
    log.append(_records(30))
    assert log.flush() == 0
    assert _logged(store) == [] and len(log.spilled_files()) == 1
    assert log.lag_seconds() > 0
    assert log.send() == 0, "still down: the part stays spilled"
    store.down = False
    assert log.send() == 30
    assert log.send() == 0 and log.spilled_files() == []
    assert _logged(store) == _ids(range(30))
    assert hooks.counts == {"buffered": 30, "spilled": 30, "resent": 30}
    assert set(store.writes.values()) == {1}
    assert log.lag_seconds() == 0


def test_close_flushes_everything(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    hooks = Outcomes()
    log = _log(store, tmp_path / "spill", hooks=hooks)
    log.start()
    for i in range(5):
        log.append(_records(7, i * 7))
    log.close()
    assert _logged(store) == _ids(range(35))
    assert hooks.counts == {"buffered": 35, "flushed": 35}


def test_a_record_that_cannot_be_serialised_is_quarantined_alone(tmp_path: Path) -> None:
    """Before: the whole buffer went to one to_parquet call, and one odd value dropped every record in it."""
    store = LocalStore(tmp_path / "store")
    hooks = Outcomes()
    log = _log(store, tmp_path / "spill", hooks=hooks)
    log.append(_records(20))
    odd = np.array([1.5, 2.5, 2**70, 3.5, 4.5], dtype=object)  # an int no Parquet column can hold
    log.append(_records(5, 20, _prediction=odd))
    log.append(_records(20, 25))
    log.flush()
    assert _logged(store) == sorted(set(_ids(range(45))) - {"r22"})
    (qkey,) = store.list(f"{QUARANTINE}/predictions/m/")
    assert qkey.endswith(".jsonl") and "/date=" in qkey
    (line,) = store.read(qkey).decode().splitlines()
    kept = json.loads(line)
    assert kept["record"][ID] == "r22" and kept["record"]["_prediction"] == 2**70
    assert "int" in kept["error"].lower()
    assert hooks.counts["quarantined"] == 1 and hooks.counts["flushed"] == 44


def test_records_parquet_has_no_column_for_are_quarantined_and_the_others_kept(tmp_path: Path) -> None:
    """Arrow holds them, Parquet does not (an empty struct): found as the part is written, on disk or to the store."""
    for spill_max_bytes in (1 << 30, 0):  # through the spill directory; straight to the store
        store = LocalStore(tmp_path / f"store-{spill_max_bytes}")
        hooks = Outcomes()
        log = _log(store, tmp_path / f"spill-{spill_max_bytes}", hooks=hooks, spill_max_bytes=spill_max_bytes)
        log.append(_records(10))
        frame = _records(3, 10)
        log.append({**{c: frame[c].to_numpy() for c in frame.columns}, "extra": [{}, {}, {}]})
        log.append(_records(5, 13))
        log.flush()
        assert _logged(store) == _ids(range(10), range(13, 18))
        (qkey,) = store.list(f"{QUARANTINE}/predictions/m/")
        lines = [json.loads(line) for line in store.read(qkey).decode().splitlines()]
        assert sorted(r["record"][ID] for r in lines) == _ids(range(10, 13))
        assert all("struct" in r["error"] for r in lines)
        assert hooks.counts["quarantined"] == 3 and hooks.counts["flushed"] == 15
        assert not [p for p in (tmp_path / f"spill-{spill_max_bytes}").rglob("*") if p.is_file()], "no partial part left"


def test_records_of_another_type_after_a_model_swap_are_all_kept(tmp_path: Path) -> None:
    """Before: int and str labels in one buffer made one object column that Parquet refused: all lost."""
    store = LocalStore(tmp_path / "store")
    log = _log(store, tmp_path / "spill")
    log.append(_records(10, _prediction=np.arange(10)))
    log.append(_records(10, 10, _prediction=[f"class_{i}" for i in range(10)]))
    log.flush()
    assert _logged(store) == _ids(range(20))
    assert len(store.list("predictions/m/")) == 2, "one part per schema"


def test_a_part_takes_the_model_schema_not_the_values_of_one_flush(tmp_path: Path) -> None:
    """Before: a column all null in an append was Arrow's null type, and its records a part of their own."""
    schema = Schema("y", "regression", [Column("x", "numeric", "float64", 0.0), Column("zone", "categorical", "object", 0.5),
                                        Column("day", "datetime", "datetime64[ns]", 0.5)], id_columns=["trip"])
    store = LocalStore(tmp_path / "store")
    log = _log(store, tmp_path / "spill")
    types = log_types(schema)
    log.append(_records(5, zone=[None] * 5, day=pd.NaT, trip=[None] * 5, _prediction=np.zeros(5)), types)
    log.append(_records(5, 5, zone=list("abcde"), day=pd.Timestamp("2026-01-01"), trip=list("tuvwx"),
                        _prediction=np.ones(5)), types)
    log.flush()
    log.append(_records(3, 10, zone=[None] * 3, day=pd.NaT, trip=[None] * 3, _prediction=np.zeros(3)), types)
    log.flush()
    keys = [k for k in store.list("predictions/m/") if k.endswith(".parquet")]
    assert len(keys) == 2, "one part per flush, whatever is null in it"
    schemas = [pq.read_schema(store.url(k)) for k in keys]
    assert schemas[0] == schemas[1]
    assert schemas[0].field("zone").type == pa.string() and schemas[0].field("trip").type == pa.string()
    assert schemas[0].field("day").type == pa.timestamp("ns")
    assert _logged(store) == _ids(range(13))


def test_records_of_two_days_go_to_their_own_partitions(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    log = _log(store, tmp_path / "spill")
    frame = _records(4)
    frame[TIME] = pd.to_datetime(["2026-01-01T23:59:59Z", "2026-01-01T12:00:00Z", "2026-01-02T00:00:01Z",
                                  "2026-01-02T08:00:00Z"], utc=True)
    log.append(frame)
    log.flush()
    days = sorted(k.split("/date=")[1][:10] for k in store.list("predictions/m/"))
    assert days == ["2026-01-01", "2026-01-02"] and _logged(store) == _ids(range(4))


def test_a_claim_holds_until_its_lease_ends_whatever_the_pid(tmp_path: Path) -> None:
    """Before: a claim named after the PID looked alive in a restarted container that got the same PID."""
    store = FlakyStore(tmp_path / "store")
    spill = tmp_path / "spill"
    first = _log(store, spill, lease_seconds=30)
    store.down = True
    first.append(_records(10))
    first.flush()
    (part,) = first.spilled_files()
    # a worker claimed the part and died while sending it (its PID is ours: the restarted-container case)
    live = part.with_name(f".{part.name}.claim-{os.getpid()}abc-{int(time.time()) + 30}")
    os.rename(part, live)
    store.down = False
    hooks = Outcomes()
    restarted = _log(store, spill, hooks=hooks)
    restarted.start()
    restarted.close()  # (a restarted server's start lists the parts left over: the claimed one is not among them)
    restarted = _log(store, spill, hooks=hooks)
    assert restarted.spilled_files() == [] and restarted.send() == 0, "a live lease is respected"
    expired = live.with_name(f".{part.name}.claim-{os.getpid()}abc-{int(time.time()) - 1}")
    os.rename(live, expired)
    assert restarted.send() == 10, "an expired lease is taken over"
    # Sent for a dead owner: a re-send, not a first flush (the SIGKILL fault counts re-sends).
    assert hooks.counts["resent"] == 10 and hooks.counts["flushed"] == 0, hooks.counts
    assert _logged(store) == _ids(range(10)) and not list(spill.rglob("*claim*"))


def test_workers_sharing_a_spill_directory_send_each_part_once(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "store")
    spill = tmp_path / "spill"
    logs = [_log(store, spill) for _ in range(4)]
    store.down = True
    for i, log in enumerate(logs):
        for j in range(5):
            log.append(_records(10, (i * 5 + j) * 10))
            log.spool()
    store.down = False
    threads = [threading.Thread(target=log.send) for log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _logged(store) == _ids(range(200))
    assert len(store.writes) == 20 and set(store.writes.values()) == {1}, "no part is sent twice"


def test_a_full_spill_directory_is_an_error_and_a_metric_and_loses_nothing(tmp_path: Path, caplog) -> None:
    store = FlakyStore(tmp_path / "store")
    hooks = Outcomes()
    log = _log(store, tmp_path / "spill", spill_max_bytes=6000, hooks=hooks)
    store.down = True
    with caplog.at_level(logging.ERROR, logger="flywheel.serving"):
        for i in range(10):
            log.append(_records(20, i * 20))
            log.spool()
    assert hooks.spill_errors > 0
    assert any("cannot take predictions records" in r.getMessage() and "spill_max_mb" in r.getMessage()
               for r in caplog.records)
    assert log.pending > 0, "what neither disk nor store takes waits in memory"
    store.down = False
    log.flush()
    assert log.pending == 0
    assert _logged(store) == _ids(range(200))
    assert hooks.counts["dropped"] == 0


def test_memory_is_bounded_when_neither_disk_nor_store_takes_records(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "store")
    hooks = Outcomes()
    log = _log(store, tmp_path / "spill", spill_max_bytes=1, max_buffer_rows=50, hooks=hooks)
    store.down = True
    for i in range(10):
        log.append(_records(10, i * 10))
        log.spool()
    assert log.pending <= 50
    assert hooks.counts["dropped"] == 100 - log.pending
    store.down = False
    log.flush()
    assert _logged(store) == _ids(range(100 - len(_logged(store)), 100)), "the newest records are kept"


def test_close_is_bounded_and_leaves_the_rest_spilled_for_the_next_server(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "store")
    spill = tmp_path / "spill"
    log = _log(store, spill)
    for i in range(5):
        log.append(_records(10, i * 10))
        log.spool()
    log.append(_records(10, 50))
    store.hang, store.down = 0.8, True  # every write hangs, then fails
    start = time.monotonic()
    log.close(seconds=1.0)
    took = time.monotonic() - start
    assert took < 1.0 + 0.8 + 0.5, f"close took {took:.1f}s"
    assert _logged(store) == []
    store.hang, store.down = 0.0, False
    after = _log(store, spill)
    after.start()
    assert after.send() == 60
    after.close()
    assert _logged(store) == _ids(range(60))


def test_columns_log_as_the_same_frame_would(tmp_path: Path) -> None:
    """append takes columns (numpy, Arrow, lists) as well as a frame; the stored part is the same."""
    import pyarrow as pa

    n = 6
    now = pd.DatetimeIndex([pd.Timestamp.now(tz="UTC")]).repeat(n)
    frame = pd.DataFrame({ID: [f"r{i}" for i in range(n)], TIME: now, "x": np.arange(n, dtype=float),
                          "version": ["v1"] * n, "city": ["a", None, "b", "c", None, "d"]})
    columns = {ID: pa.array(frame[ID].tolist(), pa.string()), TIME: now, "x": frame["x"].to_numpy(),
               "version": np.full(n, "v1", dtype=object), "city": frame["city"].to_numpy()}
    stored = []
    for i, records in enumerate((frame, columns)):
        store = LocalStore(tmp_path / f"store{i}")
        log = _log(store, tmp_path / f"spill{i}")
        log.append(records)
        assert log.flush() == n
        (key,) = store.list("predictions/m/")
        stored.append(pd.read_parquet(store.url(key)))
    assert stored[0].dtypes.to_dict() == stored[1].dtypes.to_dict()
    pd.testing.assert_frame_equal(stored[0], stored[1])


def test_columns_of_unequal_length_are_refused_at_append_and_lose_nothing_queued(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    log = _log(store, tmp_path / "spill")
    log.append(_records(3))
    try:
        log.append({ID: np.array(["a", "b"], dtype=object), TIME: _records(3)[TIME].to_numpy()})
    except ValueError as exc:
        assert "unequal length" in str(exc)
    else:
        raise AssertionError("columns of unequal length were queued")
    log.flush()
    assert _logged(store) == _ids(range(3))


def test_a_column_record_that_cannot_be_serialised_is_quarantined_alone(tmp_path: Path) -> None:
    """The per-record fallback works on columns too: the record is quarantined at append, the others kept."""
    store = LocalStore(tmp_path / "store")
    hooks = Outcomes()
    log = _log(store, tmp_path / "spill", hooks=hooks)
    frame = _records(4)
    columns = {c: frame[c].to_numpy() for c in frame.columns}
    columns["_prediction"] = np.array([1.5, 2**70, 3.5, 4.5], dtype=object)
    log.append(columns)
    assert hooks.counts == {"buffered": 4, "quarantined": 1}  # converted on the request path
    log.flush()
    assert _logged(store) == sorted(set(_ids(range(4))) - {"r1"})
    (qkey,) = store.list(f"{QUARANTINE}/predictions/m/")
    assert json.loads(store.read(qkey).decode())["record"][ID] == "r1"
    assert hooks.counts["quarantined"] == 1 and hooks.counts["flushed"] == 3


def test_nan_in_a_float_column_is_logged_as_null(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    log = _log(store, tmp_path / "spill")
    x = np.array([1.5, np.nan, -2.0, np.nan], dtype=np.float64)
    y = np.array([0.25, 1.0, 2.0, 3.0], dtype=np.float32)
    log.append(_records(4, x=x, y=y))  # a frame
    log.append({ID: np.array(["r4", "r5", "r6", "r7"], dtype=object), TIME: _records(4)[TIME].to_numpy(),
                "x": x, "y": y})  # columns
    log.flush()
    keys = [k for k in store.list("predictions/m/") if k.endswith(".parquet")]
    table = pd.concat([pd.read_parquet(store.url(k)) for k in keys]).sort_values(ID)
    import pyarrow.parquet as pq

    [schema] = {pq.read_schema(store.url(k)).field("x").type for k in keys}
    assert str(schema) == "double"
    assert table["x"].isna().tolist() == [False, True, False, True] * 2
    assert table["x"].dropna().tolist() == [1.5, -2.0] * 2 and table["y"].tolist() == [0.25, 1.0, 2.0, 3.0] * 2
    nulls = sum(pq.read_table(store.url(k), columns=["x"]).column("x").null_count for k in keys)
    assert nulls == 4, "NaN is stored as null, not as a NaN value"
    log.close()


def test_a_column_is_compressed_only_where_compression_shrinks_it(tmp_path: Path) -> None:
    """Noise-like doubles are stored plain (snappy gains little or nothing on them), measured values and text compressed."""
    import pyarrow.parquet as pq

    store = LocalStore(tmp_path / "store")
    log = _log(store, tmp_path / "spill")
    n = 20_000
    rng = np.random.default_rng(0)
    noise = rng.normal(size=n)
    counts = rng.integers(0, 12, size=n).astype(float)
    widened = noise.astype(np.float32).astype(float)  # an ONNX model's output: snappy takes only a quarter off
    log.append(_records(n, noise=noise, counts=counts, widened=widened, plan=rng.choice(["basic", "plus", "pro"], size=n)))
    log.flush()
    [key] = [k for k in store.list("predictions/m/") if k.endswith(".parquet")]
    meta = pq.ParquetFile(store.url(key)).metadata
    codec = {meta.schema.column(i).name: meta.row_group(0).column(i).compression for i in range(meta.num_columns)}
    assert codec["noise"] == codec["widened"] == "UNCOMPRESSED"
    assert codec["counts"] == codec["plan"] == "SNAPPY"
    back = pd.read_parquet(store.url(key)).sort_values(ID)
    want = _records(n, noise=noise, counts=counts).sort_values(ID)
    assert back["noise"].tolist() == want["noise"].tolist() and back["counts"].tolist() == want["counts"].tolist()
    log.close()


def test_counts_add_up_over_workers_that_send_each_others_spilled_parts(tmp_path: Path) -> None:
    """Before: a part spilled by one worker was counted spilled again by each worker whose send of it failed,
    and flushed, not resent, by a worker that had not spilled it (per pod: spilled 693, resent 310)."""
    store = FlakyStore(tmp_path / "store")
    spill = tmp_path / "spill"
    hooks = {"a": Outcomes(), "b": Outcomes()}
    a, b = (_log(store, spill, hooks=hooks[name]) for name in ("a", "b"))
    store.down = True
    a.append(_records(10))
    assert a.flush() == 0, "a's send fails: a spills the part"
    a.append(_records(10, 10))
    a.spool()  # a knows the store refuses: spooled as spilled
    b.append(_records(10, 20))
    b.spool()  # b has not seen the outage yet
    assert b.send() == 0, "b's send of a's part fails"
    assert a.send() == 0
    store.down = False
    assert b.send() == 30, "b sends every part, a's included"
    assert a.spilled_files() == [] and _logged(store) == _ids(range(30))
    total = hooks["a"].counts + hooks["b"].counts
    assert total["buffered"] == total["flushed"] + total["resent"] + total["quarantined"] + total["dropped"] == 30, total
    assert total["spilled"] == total["resent"] == 20, total


def test_appends_wait_for_room_and_memory_never_holds_more_than_the_sigkill_bound(tmp_path: Path) -> None:
    """Before: append never waited; with the spooler slowed, every record appended sat in memory, all lost to a SIGKILL.

    The spill directory refuses parts, so the spooler writes to the store, which takes a write only
    when the test lets one through: while an append waits for room. What is not yet in a file is
    measured right after each append returns; no write can happen between an append's admission
    and that measure, so the measured maximum is the largest the log ever held.
    """
    store = FlakyStore(tmp_path / "store")
    store.permits = threading.Semaphore(0)
    flush_rows, size, appends = 10, 4, 30
    log = _log(store, tmp_path / "spill", flush_rows=flush_rows, flush_seconds=0.05, spill_max_bytes=0,
               append_wait_seconds=60)
    log.start()
    acked = most = 0

    def appender() -> None:
        nonlocal acked, most
        for i in range(appends):
            log.append(_records(size, i * size))
            with store.lock:
                acked += size
                most = max(most, acked - store.rows)

    thread = threading.Thread(target=appender)
    thread.start()
    waits = 0
    while _until(lambda: log.waiting == 1 or not thread.is_alive(), 30) and thread.is_alive():
        waits += 1
        before = acked
        store.permits.release()  # one write, which frees room for the waiting append
        assert _until(lambda before=before: acked > before, 30), "a write frees room for the waiting append"
    thread.join(timeout=30)
    assert not thread.is_alive(), "the appender finished"
    store.permits.release(10_000)
    log.close()
    assert _logged(store) == _ids(range(size * appends)), "nothing appended is lost"
    assert log.limit <= most <= sigkill_loss_bound(flush_rows, size), (most, sigkill_loss_bound(flush_rows, size))
    assert waits > 0, "appends waited for room"


def test_an_append_that_finds_no_room_in_time_is_refused_and_nothing_else_is_lost(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "store")
    store.permits = threading.Semaphore(0)
    hooks = Outcomes()
    log = _log(store, tmp_path / "spill", flush_rows=10, flush_seconds=0.05, spill_max_bytes=0,
               append_wait_seconds=0.2, hooks=hooks)
    log.start()
    appended = 0
    while log.unwritten < log.limit:  # the spooler is stuck in its first write: the log fills up
        log.append(_records(5, appended))
        appended += 5
    start = time.monotonic()
    with pytest.raises(LogFull, match="log_append_wait_seconds"):
        log.append(_records(5, 1000))
    assert time.monotonic() - start >= 0.2, "it waited for room first"
    assert hooks.counts["refused"] == 5 and hooks.counts["buffered"] == appended
    store.permits.release(10_000)
    log.close()
    assert _logged(store) == _ids(range(appended)), "every record let in is stored, the refused ones are not"
    with pytest.raises(LogFull, match="closed"):
        log.append(_records(1, 2000))


def test_a_part_has_min_max_statistics_for_time_and_prediction_but_not_for_request_ids(tmp_path: Path) -> None:
    """Queries filter on time, version and prediction; request ids are random, so their min/max prune
    nothing, and comparing them as text was a third of the cost of writing a 100k-row part."""
    store = LocalStore(tmp_path / "store")
    log = _log(store, tmp_path / "spill")
    log.append(_records(50, _prediction=np.arange(50, dtype=float), feature=np.ones(50)))
    log.flush()
    [key] = [k for k in store.list("predictions/m/") if k.endswith(".parquet")]
    meta = pq.ParquetFile(store.url(key)).metadata
    stats = {meta.schema.column(i).name: meta.row_group(0).column(i).statistics for i in range(meta.num_columns)}
    has_min_max = {name: s is not None and s.has_min_max for name, s in stats.items()}
    assert has_min_max == {ID: False, TIME: True, "x": False, "_prediction": True, "feature": False}
    assert len(_logged(store)) == 50
    log.close()


def test_a_part_of_many_small_appends_is_one_chunk_per_column() -> None:
    """At one client each request appends a few rows; the part's size estimate and the Parquet writer
    walked one chunk per append and column."""
    from services.serving.log_encoding import encode_records, parts_of

    batches = []
    for i in range(300):
        appended, _ = encode_records(_records(2, start=2 * i), time.time())
        batches += appended
    [part] = parts_of("predictions/m", batches, [], lambda day, since: "unused")
    assert part.records == 600
    assert {column.num_chunks for column in part.table.columns} == {1}
    assert part.table.column(ID).to_pylist() == [f"r{i}" for i in range(600)]


def test_batches_of_two_schemas_on_one_day_become_one_part_each_in_order() -> None:
    """A day's batches are built into one table when their schemas agree; where they differ (a model
    swap mid-flush), each schema gets its own part and no record is lost or reordered within it."""
    import pyarrow as pa

    from services.serving.log_encoding import Batch, parts_of

    def batch(day: str, i: int, wide: bool) -> Batch:
        columns = {ID: [f"r{i}"], "x": [float(i)]} | ({"y": [str(i)]} if wide else {})
        return Batch(day, pa.record_batch(columns), since=float(i))

    batches = [batch("2026-12-05", i, wide=i % 2 == 1) for i in range(6)] + [batch("2026-12-06", 6, wide=False)]
    parts = parts_of("predictions/m", batches, [], lambda day, since: "unused")
    assert [(p.day, p.table.column_names, p.table.column(ID).to_pylist()) for p in parts] == [
        ("2026-12-05", [ID, "x"], ["r0", "r2", "r4"]),
        ("2026-12-05", [ID, "x", "y"], ["r1", "r3", "r5"]),
        ("2026-12-06", [ID, "x"], ["r6"]),
    ]
