"""The serving fault suite: each fault injected into the real server, store and signals; what was kept.

The faults themselves live in testkit/faults.py, shared with `make bench`'s faults table.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import testkit.faults as harness

pytestmark = pytest.mark.slow


def _kept_everything(r: harness.FaultResult) -> None:
    assert r.served and r.served > 0, r
    assert r.duplicates == 0, f"{r.duplicates} records stored twice: {r}"
    assert r.lost == 0, f"{r.lost} served records are not in the store: {r}"
    assert r.stored == r.served, r


def test_s3_down_for_30_seconds_loses_nothing_and_the_counts_of_two_workers_add_up(tmp_path: Path) -> None:
    """Before: a part one worker spilled and the other sent was counted under the wrong name (spilled 693, resent 310)."""
    r = harness.store_outage(tmp_path)
    _kept_everything(r)
    assert r.details["served_during_outage"] > 0, "requests are served while the store is down"
    assert r.details["failed_requests"] == 0, r.details["statuses"]
    assert r.details["spill_drained"], r.details
    counts = Counter(r.details["log_outcomes"])
    assert r.details["counts_settled"], counts
    assert counts["spilled"] > 0, "the outage spilled records"
    assert counts["buffered"] == r.served, counts
    assert counts["buffered"] == counts["flushed"] + counts["resent"] + counts["quarantined"] + counts["dropped"], counts
    assert counts["spilled"] == counts["resent"], counts
    assert r.ok, r


def test_sigterm_during_traffic_loses_no_record(tmp_path: Path) -> None:
    r = harness.sigterm(tmp_path)
    assert r.details["stored_before_signal"] == 0, "only the shutdown flush may write these records"
    assert r.details["exit_code"] == 0
    _kept_everything(r)
    assert r.ok, r


def test_sigkill_loses_at_most_the_buffer_and_the_restart_resends_the_spill(tmp_path: Path) -> None:
    r = harness.sigkill(tmp_path)
    assert r.duplicates == 0, r
    assert r.lost is not None and r.lost <= r.allowed_loss, f"lost {r.lost} > bound {r.allowed_loss}: {r}"
    assert r.details["spilled_at_kill"] > 0
    assert r.details["resent_on_restart"] >= r.details["spilled_at_kill"], r.details
    assert r.details["spill_drained"], "the restarted server empties the spill directory"
    assert r.ok, r


def test_a_slowed_spooler_makes_requests_wait_then_503_and_memory_stays_within_the_sigkill_bound(tmp_path: Path) -> None:
    """Before: appends never waited; with the log's writes held, every answered record sat in memory."""
    r = harness.slow_store(tmp_path)
    d = r.details
    assert d["write_held"], "the spooler was held in a store write"
    assert d["in_memory_max"] <= d["bound"], f"{d['in_memory_max']} records answered and not stored > bound {d['bound']}"
    assert d["in_memory_max"] >= d["limit"], "the log filled up to its limit"
    assert d["refused_seen"] and d["refusals"], d["statuses"]
    assert d["predict_many_statuses"] == [503, 503], "JSON and Arrow bodies are refused the same way"
    assert d["feedback_statuses"][503] == 1 and d["feedback_statuses"][200] >= d["limit"], d["feedback_statuses"]
    assert "feedback log" in d["feedback_refusal"], "the feedback log refuses a label it has no room for"
    assert d["feedback_stored_while_held"] == 0 and d["feedback_accepted_all_stored"], d
    for refusal in d["refusals"]:
        assert refusal["status"] == 503 and refusal["retry_after"] == "1", refusal
        assert "log_append_wait_seconds" in refusal["body"], refusal
        assert refusal["seconds"] >= 1.0, "the request waited for room before it was refused"
    assert set(d["statuses"]) <= {200, 503}, d["statuses"]
    assert d["after_status"] == 200, "served again once the store takes writes"
    assert d["log_outcomes"]["refused"] > 0 and d["refused_requests_metric"] > 0, d
    assert d["counts_add_up"], d["log_outcomes"]
    _kept_everything(r)
    assert r.ok, r


def test_a_full_spill_directory_is_an_error_a_metric_and_the_service_stays_up(tmp_path: Path) -> None:
    r = harness.spill_full(tmp_path)
    assert "spill directory" in r.details["error_line"] and "cannot take predictions records" in r.details["error_line"]
    assert r.details["spill_errors"] > 0
    assert r.details["readyz"] == 200 and r.details["failed_requests"] == 0
    _kept_everything(r)  # what the disk refused waited in memory until the store was back
    assert r.ok, r


def test_a_record_that_cannot_be_serialised_is_quarantined_alone(tmp_path: Path) -> None:
    r = harness.unserialisable(tmp_path)
    assert r.details["odd_id"] is not None, r
    assert r.details["quarantined_ids"] == [r.details["odd_id"]]
    assert r.details["quarantined_metric"] == 1
    _kept_everything(r)
    assert r.ok, r
