"""Fixtures for the monitoring tests (data helpers in tests/monitoring/logs.py)."""

from __future__ import annotations

import pytest

from components.settings import Settings
from components.store import open_store
from tests.monitoring.logs import Served, serve_version


@pytest.fixture
def mon_settings(settings: Settings) -> Settings:
    """Hourly windows, small minimums, no cooldown unless a test asks for one."""
    return settings.model_copy(update={"window_minutes": 60, "min_rows": 1000, "cooldown_minutes": 0,
                                       "sample_size": 20_000})


@pytest.fixture
def served(mon_settings: Settings) -> Served:
    return serve_version(open_store(mon_settings.store, mon_settings), mon_settings.model)
