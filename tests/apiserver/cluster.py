"""The chart on the real API server: render, apply what 1.20 serves, tokens, access checks."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.apiserver.control_plane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "flywheel"
RELEASE_NAMESPACE = "flywheel"
KFP_NAMESPACE = "kubeflow"
# The chart's deployer subject for standalone KFP: the pipeline runner in `kubeflow` (created by KFP's install).
DEPLOYER = ("kubeflow", "pipeline-runner")
# Multi-user KFP: the release in its own namespace, runs in a profile namespace.
MULTI_USER_NAMESPACE = "flywheel-mu"
PROFILE = "team-a"


def helm_render(values: dict[str, Any] | None = None, namespace: str = RELEASE_NAMESPACE) -> list[dict[str, Any]]:
    """The chart through the real Helm engine (helm-python-sdk), as the release `flywheel` would install it."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name="flywheel", namespace=namespace, is_install=True)
    return [d for path, text in sorted(rendered.items()) if path.endswith((".yaml", ".yml"))
            for d in yaml.safe_load_all(text) if d]


@dataclass
class Applied:
    """What of the rendered chart the 1.20 API server took, what it does not serve, and the
    fields newer than 1.20 that were taken out of the objects it took."""

    applied: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

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


def _without_newer_fields(doc: dict[str, Any], removed: list[str]) -> dict[str, Any]:
    """The object minus the fields Kubernetes 1.20 does not know (each one named in ``removed``).

    ``lifecycle.preStop.sleep`` is 1.29+; the deploy step never touches it.
    """
    if doc["kind"] != "Deployment":
        return doc
    doc = copy.deepcopy(doc)
    for c in doc["spec"]["template"]["spec"]["containers"]:
        if "sleep" in c.get("lifecycle", {}).get("preStop", {}):
            del c["lifecycle"]["preStop"]
            if not c["lifecycle"]:
                del c["lifecycle"]
            removed.append(f"Deployment/{doc['metadata']['name']}: containers[{c['name']}].lifecycle.preStop.sleep")
    return doc


def apply_chart(cp: ControlPlane, docs: list[dict[str, Any]], server_side: bool = False) -> Applied:
    """``kubectl apply`` every rendered object whose API the server serves.

    The default is a client-side apply: a three-way merge of the last applied objects, the new
    ones and the live ones, as ``helm upgrade`` (Helm 3) does with the release's manifests.
    ``server_side`` applies them under the field manager ``helm``, taking over conflicting
    fields, as Helm 4 and ``kubectl apply --server-side --force-conflicts`` do.
    """
    known = served(cp)
    result = Applied()
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in known:
            result.applied.append(_without_newer_fields(doc, result.removed))
        else:
            result.skipped.append(doc)
    how = ["--server-side", "--force-conflicts", "--field-manager=helm"] if server_side else []
    cp.kubectl("apply", *how, "-f", "-", stdin=yaml.safe_dump_all(result.applied))
    return result


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
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)

