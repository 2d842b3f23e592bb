"""The deploy stage without a cluster (the embedded default).

The cluster path (RBAC, the strategic merge patch, ReplicaSets, timeout and restore) runs
against a real kube-apiserver in tests/apiserver/test_deploy_apiserver.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from components.deploy import DeployError, Rollout, RolloutFailed, deploy
from components.registry import Registry
from components.settings import load_settings
from components.store import LocalStore
from testkit.models import two_regressor_versions


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


# --- one rule for "can this version serve?": the deploy step's verdict is the server's ----------

def _off_by_spread(ref: pd.DataFrame, share: float) -> pd.DataFrame:
    """Registered regression values moved by ``share`` of their spread (ONNX's float32 moves them by about 1e-5)."""
    return ref.assign(_prediction=ref["_prediction"] + share * ref["_prediction"].std())


def _labels_changed(ref: pd.DataFrame, rows: int) -> pd.DataFrame:
    """The first ``rows`` registered labels replaced by another class (a borderline row ONNX may flip)."""
    out = ref.copy()
    classes = sorted(out["_prediction"].unique())
    out.loc[: rows - 1, "_prediction"] = [classes[(classes.index(v) + 1) % len(classes)]
                                          for v in out.loc[: rows - 1, "_prediction"]]
    return out


@pytest.mark.parametrize("task,registered,serves", [
    ("regression", lambda ref: _off_by_spread(ref, 1e-4), True),
    ("regression", lambda ref: _off_by_spread(ref, 1.0), False),
    ("classification", lambda ref: _labels_changed(ref, 1), True),  # 31 of 32 rows agree
    ("classification", lambda ref: _labels_changed(ref, 8), False),  # 24 of 32
], ids=["regression-float32-noise", "regression-wrong", "classification-one-row", "classification-wrong"])
def test_the_deploy_step_and_the_server_give_one_verdict(tmp_path: Path, task, registered, serves) -> None:
    import warnings

    from components.model_runtime import ModelRefused, load_version
    from testkit.models import LINEAR, LOGISTIC, add_version, diabetes_frame, wine_frame

    settings = load_settings(store=str(tmp_path / "store"), model="m", spill_dir=str(tmp_path / "spill"))
    registry = Registry(LocalStore(tmp_path / "store"), "m")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = (add_version(registry, diabetes_frame(), "target", LINEAR) if task == "regression"
                else add_version(registry, wine_frame(), "target", LOGISTIC))
    files = {n: registry.read(base, n) for n in registry.manifest(base)["files"]}
    reference = pd.read_parquet(io.BytesIO(registry.read(base, "reference.parquet")))
    version = registry.claim_version()
    registry.write_version(version, {**files, "reference.parquet": registered(reference).to_parquet(index=False)}, {})
    registry.promote(version, "registered predictions changed on purpose")

    try:
        load_version(registry, version)
        server_serves = True
    except ModelRefused:
        server_serves = False
    rollout = deploy(settings, mode="embedded")

    assert server_serves is serves
    assert rollout.succeeded is serves, rollout.reason
    assert registry.champion().version == (version if serves else base)
