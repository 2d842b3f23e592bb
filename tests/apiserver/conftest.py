"""Fixtures for the real-API-server tier: one control plane per session, the chart applied to it.

Without the built binaries the whole directory skips with one line naming what is missing
(``make apiserver`` builds them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from control_plane import ControlPlane, missing, start

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "flywheel"
RELEASE_NAMESPACE = "flywheel"
KFP_NAMESPACE = "kubeflow"
# The chart's deployer subject for standalone KFP: the pipeline runner in `kubeflow` (created by KFP's install).
DEPLOYER = ("kubeflow", "pipeline-runner")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = missing()
    if why:
        mark = pytest.mark.skip(reason=why)
        for item in items:
            if Path(str(item.fspath)).parent == Path(__file__).parent:
                item.add_marker(mark)


def helm_render(values: dict[str, Any] | None = None, namespace: str = RELEASE_NAMESPACE) -> list[dict[str, Any]]:
    """The chart through the real Helm engine (helm-python-sdk), as the release `flywheel` would install it."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name="flywheel", namespace=namespace, is_install=True)
    return [d for path, text in sorted(rendered.items()) if path.endswith((".yaml", ".yml"))
            for d in yaml.safe_load_all(text) if d]


@dataclass
class Applied:
    """What of the rendered chart the 1.20 API server took, and what it does not serve."""

    applied: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def kinds(self, which: str) -> set[tuple[str, str]]:
        return {(d["apiVersion"], d["kind"]) for d in getattr(self, which)}


def served(cp: ControlPlane) -> set[tuple[str, str]]:
    """(apiVersion, kind) pairs the API server serves (preferred and other versions)."""
    out: set[tuple[str, str]] = set()
    groups = cp.kubectl("api-versions").stdout.split()
    for gv in groups:
        raw = cp.kubectl("get", "--raw", "/api/v1" if gv == "v1" else f"/apis/{gv}").stdout
        for res in yaml.safe_load(raw)["resources"]:
            if "/" not in res["name"]:
                out.add((gv, res["kind"]))
    return out


def apply_chart(cp: ControlPlane, docs: list[dict[str, Any]]) -> Applied:
    """``kubectl apply`` every rendered object whose API the server serves."""
    known = served(cp)
    result = Applied()
    for doc in docs:
        (result.applied if (doc["apiVersion"], doc["kind"]) in known else result.skipped).append(doc)
    cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(result.applied))
    return result


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
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


# Multi-user KFP: the release in its own namespace, runs in a profile namespace.
MULTI_USER_NAMESPACE = "flywheel-mu"
PROFILE = "team-a"


@pytest.fixture(scope="session")
def multi_user_cluster(cluster: tuple[ControlPlane, Applied]) -> tuple[ControlPlane, Applied]:
    """The chart with ``config.kfp.mode=multi-user`` next to the standalone one, and the profile's default-editor."""
    cp, _ = cluster
    for ns in (MULTI_USER_NAMESPACE, PROFILE):
        cp.kubectl("create", "namespace", ns)
    cp.kubectl("-n", PROFILE, "create", "serviceaccount", "default-editor")
    values = {"config": {"kfp": {"mode": "multi-user", "namespace": PROFILE}}}
    return cp, apply_chart(cp, helm_render(values, MULTI_USER_NAMESPACE))


def token_for(cp: ControlPlane, namespace: str, service_account: str, audience: str | None = None) -> str:
    """A TokenRequest-issued token of a ServiceAccount (what a projected token volume holds)."""
    args = ["-n", namespace, "create", "token", service_account, "--duration", "1h"]
    if audience:
        args += ["--audience", audience]
    return cp.kubectl(*args).stdout.strip()


def can_i(cp: ControlPlane, *args: str, kubeconfig: Path | None = None) -> bool:
    """``kubectl auth can-i``: True for yes, False for no (exit 1); anything else fails the test."""
    proc = cp.kubectl("auth", "can-i", *args, kubeconfig=kubeconfig, check=False)
    if proc.returncode not in (0, 1) or proc.stdout.strip() not in ("yes", "no"):
        raise AssertionError(f"kubectl auth can-i {' '.join(args)}: {proc.stdout} {proc.stderr}")
    return proc.stdout.strip() == "yes"


def wait_for(predicate, timeout: float = 30, what: str = "condition") -> Any:
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)

