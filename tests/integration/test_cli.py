"""The command line's own logic: what `flywheel monitor` retrains on when no --data is given."""

from __future__ import annotations

import pytest

from components.net import free_port
from components.settings import load_settings
from components.store import StoreError
from pipelines.cli import _trained_on


def test_without_a_champion_a_monitor_has_nothing_to_retrain_on(tmp_path) -> None:
    assert _trained_on(load_settings(store=str(tmp_path / "store"))) is None


def test_a_store_outage_is_reported_not_taken_for_no_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    """It used to become None, and the pass then said "no trigger is configured"."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("FLYWHEEL_S3_MAX_ATTEMPTS", "1")
    with pytest.raises(StoreError, match=r"^store s3://flywheel-models/x is unreachable"):
        _trained_on(load_settings(store="s3://flywheel-models/x"))
