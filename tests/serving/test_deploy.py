"""The deploy stage without a cluster (the embedded default).

The cluster path (RBAC, the strategic merge patch, ReplicaSets, timeout and restore) runs
against a real kube-apiserver in tests/apiserver/test_deploy_apiserver.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
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


# --- `flywheel deploy`, the command beside `models promote` and `models rollback` ----------------

def _flywheel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "flywheel"), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_flywheel_deploy_embedded_checks_the_champion_and_refuses_another_version(two_versions) -> None:
    settings, registry = two_versions
    where = ["--store", settings.store, "--model", "wine"]

    ok = _flywheel("deploy", "--embedded", *where)

    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) | {"reason": ""} == {"mode": "embedded", "version": "v2", "previous": "v1",
                                                      "succeeded": True, "rolled_back": False, "reason": ""}
    refused = _flywheel("deploy", "v1", *where)  # no cluster here: embedded
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("error: embedded serving follows the champion pointer, which names v2, not v1; "
                                      "promote v1 first")
    assert registry.champion().version == "v2"


def test_flywheel_deploy_of_a_champion_that_cannot_serve_rolls_the_pointer_back(two_versions) -> None:
    settings, registry = two_versions
    v3 = registry.claim_version()
    registry.write_version(v3, {**{n: registry.read("v2", n) for n in ("schema.json", "metrics.json", "reference.parquet")},
                                "model.joblib": b"not a pickle"}, {})
    registry.promote(v3, "broken on purpose")

    failed = _flywheel("deploy", "--store", settings.store, "--model", "wine")

    assert failed.returncode == 1
    assert json.loads(failed.stdout)["rolled_back"] is True
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: version {v3} cannot serve (") and last.endswith("; champion pointer restored to v2"), last
    assert registry.champion().version == "v2"
