"""Fixtures for the real-API-server tier: one control plane per session, the chart applied to it.

The tier runs only when asked for by path (``pytest tests/apiserver``, as ``make
container-test`` does); the fast suite (``make test``) reports it as skipped with the command
that runs it. Without the built binaries it skips with one sentence naming what is missing
(``make apiserver`` builds them), or fails with it under ``FLYWHEEL_REQUIRE_TIERS=1`` (.ci/run).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver.cluster import (
    DEPLOYER,
    KFP_NAMESPACE,
    MULTI_USER_NAMESPACE,
    PROFILE,
    RELEASE_NAMESPACE,
    Applied,
    apply_chart,
    helm_render,
)
from tests.apiserver.control_plane import ControlPlane, missing, start
from tests.tiers import unavailable

HERE = Path(__file__).resolve().parent


def _asked_for(config: pytest.Config) -> bool:
    return any((p := Path(arg.split("::")[0]).resolve()) == HERE or HERE in p.parents for arg in config.args)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _asked_for(config):
        return
    mark = pytest.mark.skip(reason="real API server tier: `make container-test` runs it")
    for item in items:
        if Path(str(item.fspath)).resolve().parent == HERE:
            item.add_marker(mark)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    why = missing()
    if why:
        unavailable(why)
    cp = start(tmp_path_factory.mktemp("apiserver"))
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def cluster(control_plane: ControlPlane) -> tuple[ControlPlane, Applied]:
    """The namespaces KFP and the release would have, the pipeline runner's ServiceAccount, and the chart."""
    cp = control_plane
    for ns in (RELEASE_NAMESPACE, KFP_NAMESPACE):
        cp.kubectl("create", "namespace", ns)
    cp.kubectl("-n", DEPLOYER[0], "create", "serviceaccount", DEPLOYER[1])
    return cp, apply_chart(cp, helm_render())


@pytest.fixture(scope="session")
def multi_user_cluster(cluster: tuple[ControlPlane, Applied]) -> tuple[ControlPlane, Applied]:
    """The chart with ``config.kfp.mode=multi-user`` next to the standalone one, and the profile's default-editor."""
    cp, _ = cluster
    for ns in (MULTI_USER_NAMESPACE, PROFILE):
        cp.kubectl("create", "namespace", ns)
    cp.kubectl("-n", PROFILE, "create", "serviceaccount", "default-editor")
    values = {"config": {"kfp": {"mode": "multi-user", "namespace": PROFILE}}}
    return cp, apply_chart(cp, helm_render(values, MULTI_USER_NAMESPACE))


