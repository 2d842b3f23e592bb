"""The pipeline and monitor faults (testkit/pipeline_faults.py, shared with `make bench`): what was kept.

The champion faults run the training pipeline three times; tests/e2e/test_pipeline.py proves the
same on its shared world, so only the table runs ``champion_unusable``.
"""

from __future__ import annotations

from pathlib import Path

import testkit.pipeline_faults as faults


def test_a_failed_rollout_fails_the_run_and_the_service_keeps_the_previous_version(tmp_path: Path) -> None:
    r = faults.rollout_failure(tmp_path)
    status = r.details["status"]
    assert status["state"] == "FAILED", r
    assert status["error"]["step"] == "deploy" and "version v2 cannot serve" in status["error"]["error"], status
    assert r.details["champion_reason"] == "rollout of v2 failed", r.details
    assert r.details["versions"] == ["v1"], f"the service answered {r.details['versions']}"
    assert r.details["answers"] > 10 and r.ok, r


def test_two_passes_racing_on_a_window_trigger_once(tmp_path: Path) -> None:
    r = faults.monitor_race(tmp_path)
    assert r.ok and r.outcome.startswith("2 passes, 1 trigger(s), 1 record(s)"), r


def test_a_failed_trigger_is_retried_once_after_its_backoff(tmp_path: Path) -> None:
    r = faults.trigger_failure(tmp_path)
    assert r.details["record"]["attempts"] == 2 and r.details["record"]["status"] == "succeeded", r
    assert "at most 1 in flight" in r.outcome and r.ok, r
