"""Prediction log compaction (issue 25.6): the parts of each closed hour folded into one file.

Given many small parts as the serving workers write them, in a local store and on a real S3
protocol server (moto), then: the monitor's counts (rows per version, labelled rows joined
from /feedback, the drift window's statistics, the retrain's labelled rows) are equal before
and after compaction, and after GC; a pass reads an object per hour; two compactions at once
commit one file per hour; a compaction cut short at any store call names its hour and a re-run
completes it with nothing lost or doubled; a part re-sent after its deletion is not counted.
"""

from __future__ import annotations

import datetime as dt
import io
import threading
import time
from typing import Any

import pandas as pd
import pytest

from components.settings import Settings
from components.store import Store, open_store
from services.monitoring.compaction import MANIFEST, Manifest, compact, live_keys, open_parquet
from services.monitoring.feedback import labelled_rows
from services.monitoring.scan import Window, read_feedback, scan_window
from testkit.logs import Served, serve_version, write_parts

HOURS, PARTS, ROWS = 3, 12, 20
# three whole hours, ended long enough ago to be compacted, and the pass's now after them
START = dt.datetime.fromtimestamp((time.time() // 3600 - 6) * 3600, dt.UTC)
NOW = START + dt.timedelta(hours=HOURS + 2)  # the feedback comes an hour after its prediction
GRACE = 3600.0
LOGS = ("predictions/test", "feedback/test")


@pytest.fixture(params=["local", "s3"])
def logged(request: pytest.FixtureRequest, mon_settings: Settings) -> Served:
    """A served version and three hours of small prediction parts, half of them labelled later."""
    settings = request.getfixturevalue("s3_settings") if request.param == "s3" else mon_settings
    served = serve_version(open_store(settings.store, settings), "test")
    write_parts(served, START, HOURS, PARTS, ROWS, feedback_share=0.5)
    return served


def counts(served: Served) -> dict[str, Any]:
    """What a monitoring pass over the three hours counts, and the retrain's labelled rows."""
    store, schema = served.store, served.registry.schema(served.version)
    window = Window(START, START + dt.timedelta(hours=HOURS))
    until = NOW + dt.timedelta(hours=2)
    feedback, skipped = read_feedback(store, "test", START, until)
    reference = pd.read_parquet(io.BytesIO(served.registry.read(served.version, "reference.parquet")))
    scan = scan_window(store, "test", window, schema, served.version, reference, 20_000, feedback=feedback)
    labelled = labelled_rows(store, "test", schema, until, since=START)
    stats = {c: {k: (round(v, 9) if isinstance(v, float) else v) for k, v in r.items()} for c, r in scan.columns.items()}
    return {"rows": scan.rows, "by_version": scan.rows_by_version, "labelled": scan.labelled_rows,
            "feedback": feedback.num_rows, "columns": stats, "retrain_rows": labelled.num_rows,
            "retrain_ids": sorted(labelled.column("_request_id").to_pylist()),
            "skipped": scan.files_skipped + skipped, "files_read": scan.files_read}


def compact_all(store: Store, now: dt.datetime) -> list[Any]:
    return [compact(store, log, now.timestamp(), GRACE) for log in LOGS]


def without_files(c: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in c.items() if k != "files_read"}


def test_counts_are_equal_before_and_after_compaction_and_a_pass_reads_an_object_per_hour(logged: Served) -> None:
    before = counts(logged)
    assert before["rows"] == HOURS * PARTS * ROWS and before["files_read"] == HOURS * PARTS
    assert before["labelled"] > 0 and before["retrain_rows"] == before["labelled"] and not before["skipped"]

    done = compact_all(logged.store, NOW)
    assert [(d.hours, d.parts, d.errors) for d in done] == [(HOURS, HOURS * PARTS, []), (HOURS, HOURS * PARTS, [])]
    after = counts(logged)
    assert without_files(after) == without_files(before)
    assert after["files_read"] == HOURS, "one object per hour"

    # the parts stay for readers that listed them before the commit, until the grace has passed
    assert len([k for k in logged.store.list("predictions/test/") if "/hour=" not in k]) == HOURS * PARTS
    again = compact_all(logged.store, NOW + dt.timedelta(seconds=GRACE + 1))
    assert [(d.hours, d.deleted) for d in again] == [(0, HOURS * PARTS), (0, HOURS * PARTS)], "idempotent, then collected"
    assert not [k for k in logged.store.list("predictions/test/") if "/hour=" not in k]
    assert without_files(counts(logged)) == without_files(before)


def test_the_loop_counts_each_logged_record_once_whether_compacted_or_not(logged: Served) -> None:
    from pipelines.loop.store import count_logged

    before = [count_logged(logged.store, "test", kind) for kind in ("predictions", "feedback")]
    assert before[0] == HOURS * PARTS * ROWS and before[1] > 0
    compact_all(logged.store, NOW)  # the parts are still there, within the grace
    assert [count_logged(logged.store, "test", kind) for kind in ("predictions", "feedback")] == before


def test_a_part_sent_again_after_its_deletion_is_not_counted_twice(logged: Served) -> None:
    part = live_keys(logged.store, "predictions/test")[0]
    data = logged.store.read(part)
    before = counts(logged)
    compact_all(logged.store, NOW)
    compact_all(logged.store, NOW + dt.timedelta(seconds=GRACE + 1))
    assert not logged.store.exists(part)
    logged.store.write(part, data)  # a spill directory's lease ran out mid-upload: the part is sent again
    assert without_files(counts(logged)) == without_files(before)


def test_a_late_part_of_a_compacted_hour_is_folded_in_by_the_next_compaction(logged: Served) -> None:
    before = counts(logged)
    compact_all(logged.store, NOW)
    late = write_parts(logged, START, 1, 1, 7, seed=9)  # arrives after its hour was compacted
    assert counts(logged)["rows"] == before["rows"] + late
    done = compact_all(logged.store, NOW + dt.timedelta(minutes=5))
    assert (done[0].hours, done[0].parts) == (1, 1)
    after = counts(logged)
    assert after["rows"] == before["rows"] + late and after["files_read"] == HOURS


class Rendezvous:
    """A store whose conditional replace waits until ``parties`` callers reach it: both passes have
    written their files before either commits, so one must lose the race."""

    def __init__(self, inner: Store, parties: int) -> None:
        self.inner, self.uri = inner, inner.uri
        self.barrier = threading.Barrier(parties, timeout=60)
        self.local = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def replace(self, key: str, data: bytes, expected: str | None) -> bool:
        if not getattr(self.local, "met", False):
            self.local.met = True
            self.barrier.wait()
        return self.inner.replace(key, data, expected)


def test_two_compactions_at_once_commit_one_file_per_hour_and_lose_nothing(logged: Served) -> None:
    before = counts(logged)
    store = Rendezvous(logged.store, 2)
    results: list[Any] = []

    def one() -> None:
        results.append(compact(store, "predictions/test", NOW.timestamp(), GRACE))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 2 and not any(r.errors for r in results)
    assert sum(r.hours for r in results) == HOURS and sum(r.parts for r in results) == HOURS * PARTS, \
        "each hour committed once, each part folded in once"
    manifests = [k for k in logged.store.list("predictions/test/") if k.endswith(MANIFEST)]
    assert len(manifests) == HOURS
    for key in manifests:
        manifest = Manifest.decode(logged.store.read(key))
        folder = key.removesuffix(MANIFEST)
        files = [k for k in logged.store.list(folder) if k.endswith(".parquet")]
        assert files == manifest.files, "the loser deleted its file"
        assert sum(open_parquet(logged.store, f).metadata.num_rows for f in files) == PARTS * ROWS
    compact(logged.store, "feedback/test", NOW.timestamp(), GRACE)
    assert without_files(counts(logged)) == without_files(before)


class FaultAt:
    """A store whose ``n``-th change (write, conditional replace, upload or delete) fails, as a
    compaction killed at that point would leave it: nothing after it happens."""

    def __init__(self, inner: Store, n: int) -> None:
        self.inner, self.uri, self.n, self.calls = inner, inner.uri, n, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _change(self, name: str, *args: Any) -> Any:
        self.calls += 1
        if self.calls == self.n:
            raise OSError(f"injected fault at change {self.n} ({name})")
        return getattr(self.inner, name)(*args)

    def write(self, key: str, data: bytes) -> None:
        self._change("write", key, data)

    def replace(self, key: str, data: bytes, expected: str | None) -> bool:
        return self._change("replace", key, data, expected)

    def move_file(self, path: Any, key: str) -> None:
        self._change("move_file", path, key)

    def delete(self, key: str) -> None:
        self._change("delete", key)


def test_a_compaction_cut_short_at_any_store_call_names_its_hour_and_a_rerun_completes_it(
        mon_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    n, seen_faults = 1, 0
    while True:
        settings = mon_settings.model_copy(update={"store": str(tmp_path_factory.mktemp("store"))})
        served = serve_version(open_store(settings.store, settings), "test")
        write_parts(served, START, HOURS, 4, ROWS, feedback_share=0.5)
        before = counts(served)
        faulty = FaultAt(served.store, n)
        done = compact(faulty, "predictions/test", NOW.timestamp(), GRACE)
        if faulty.calls < n:  # the fault point lies past the last change: every point has been tried
            break
        seen_faults += 1
        assert len(done.errors) == 1, done.errors
        assert "predictions/test/date=" in done.errors[0] and " hour " in done.errors[0] \
            and "injected fault" in done.errors[0], done.errors[0]
        assert without_files(counts(served)) == without_files(before), f"cut short at change {n}"
        rerun = compact(served.store, "predictions/test", NOW.timestamp(), GRACE)
        assert not rerun.errors and done.hours + rerun.hours >= HOURS
        assert counts(served)["files_read"] == HOURS and without_files(counts(served)) == without_files(before)
        later = compact(served.store, "predictions/test", (NOW + dt.timedelta(days=1)).timestamp(), GRACE)
        assert not later.errors
        assert [k for k in served.store.list("predictions/test/") if k.endswith(".parquet")] == \
            live_keys(served.store, "predictions/test"), "covered parts and orphaned files collected"
        assert without_files(counts(served)) == without_files(before)
        n += 1
    assert seen_faults >= 2 * HOURS, "an upload and a commit per hour were each cut short"


def test_the_monitor_compacts_after_its_pass_and_late_rows_count_once(mon_settings: Settings) -> None:
    """Passes over three hourly windows, compacting after each; a part of the first hour arrives after that
    hour was compacted: the next pass counts it late, once, and then folds it into the hour's file."""
    from services.monitoring.monitor import run_pass

    settings = mon_settings.model_copy(update={"monitor_reports": "never"})
    served = serve_version(open_store(settings.store, settings), "test")
    rows = 100
    total = write_parts(served, START, HOURS, PARTS, rows)
    seen, late, compacted = [], [], []
    for h in range(HOURS):
        if h == 1:
            total += write_parts(served, START, 1, 1, 7, seed=9)  # a spill re-sent after a restart
        s = run_pass(settings, served.store, None, now=START + dt.timedelta(hours=h + 1, minutes=15))
        assert s.status == "ok" and s.decision.done, s.message
        seen.append(s.rows["in_window"])  # late rows included
        late.append(s.rows["late"])
        compacted.append(s.compaction["predictions"]["hours"])
        assert not s.warnings, s.warnings
    assert late == [0, 7, 0]
    assert compacted == [1, 2, 1], "the hour just closed; the second pass also refolds the first hour with its late part"
    assert sum(seen) == total == HOURS * PARTS * rows + 7, "every row counted once"
    assert len(live_keys(served.store, "predictions/test")) == HOURS, "an object per hour after the last pass"
