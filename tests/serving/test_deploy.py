"""The deploy stage without a cluster (the embedded default).

The cluster path (RBAC, the strategic merge patch, ReplicaSets, timeout and restore) runs
against a real kube-apiserver in tests/apiserver/test_deploy_apiserver.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.deploy import DeployError, Rollout, RolloutFailed, deploy
from components.registry import Registry
from components.settings import load_settings
from components.store import LocalStore
from tests.serving.models import two_regressor_versions


@pytest.fixture
def two_versions(tmp_path: Path):
    """Champion v2 with v1 as its predecessor."""
    settings = load_settings(store=str(tmp_path / "store"), model="wine", spill_dir=str(tmp_path / "spill"))
    registry = Registry(LocalStore(tmp_path / "store"), "wine")
    two_regressor_versions(registry)
    return settings, registry


def test_embedded_deploy_is_the_champion_pointer(two_versions) -> None:
    settings, _ = two_versions
    result = deploy(settings, mode="embedded")
    assert result.succeeded and result.mode == "embedded" and (result.version, result.previous) == ("v2", "v1")
    assert result.checked() is result
    with pytest.raises(DeployError, match="promote v1"):
        deploy(settings, version="v1", mode="embedded")


def test_a_failed_rollout_fails_the_step_with_its_reason() -> None:
    failed = Rollout("cluster", "v2", "v1", False, True, "rollout of v2 failed (timed out after 3s); v1 restored")
    with pytest.raises(RolloutFailed, match=r"timed out after 3s\); v1 restored"):
        failed.checked()
