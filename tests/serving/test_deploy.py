"""The deploy stage against a loopback HTTP server that plays the Kubernetes API.

The fake API server records every call (verb, path, content type, body) and moves a
Deployment through a rolling update: to completion for a good version, to
ProgressDeadlineExceeded for a version whose pods never become ready.
"""

from __future__ import annotations

import copy
import json
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from components.deploy import DeployError, deploy, version_patch
from components.registry import Registry
from components.settings import load_settings
from components.store import LocalStore
from tests.serving.models import LINEAR, add_version, diabetes_frame

PATH = "/apis/apps/v1/namespaces/flywheel/deployments/flywheel-serving"
STRATEGIC = "application/strategic-merge-patch+json"


class FakeKubernetes:
    """A Deployment behind GET and PATCH; versions in ``broken`` never become available."""

    def __init__(self, version: str, broken: set[str] = frozenset()) -> None:
        self.broken = broken
        self.calls: list[dict[str, Any]] = []
        self.deployment = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "flywheel-serving", "namespace": "flywheel", "generation": 1},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "flywheel-serving"}},
                     "template": {"metadata": {"labels": {"app": "flywheel-serving"},
                                               "annotations": {"flywheel.io/model-version": version}},
                                  "spec": {"containers": [
                                      {"name": "serving", "image": "flywheel-serving:1",
                                       "env": [{"name": "FLYWHEEL_MODEL", "value": "wine"},
                                               {"name": "MODEL_VERSION", "value": version}]},
                                      {"name": "sidecar", "image": "proxy:1"}]}}},
            "status": self._done(1),
        }
        self._polls = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.calls.append({"verb": "GET", "path": self.path, "auth": self.headers.get("Authorization")})
                if self.path != PATH:
                    return self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                fake._advance()
                self._send(200, fake.deployment)

            def do_PATCH(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.calls.append({"verb": "PATCH", "path": self.path, "content_type": self.headers["Content-Type"],
                                   "body": body})
                fake._apply(body)
                self._send(200, fake.deployment)

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def _done(generation: int) -> dict:
        return {"observedGeneration": generation, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
                "readyReplicas": 2, "conditions": [{"type": "Progressing", "status": "True",
                                                    "reason": "NewReplicaSetAvailable"}]}

    def version(self) -> str:
        env = self.deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        return next(e["value"] for e in env if e["name"] == "MODEL_VERSION")

    def _apply(self, patch: dict) -> None:
        # the strategic merge the API server would do, for the fields the deploy stage sends
        tmpl = self.deployment["spec"]["template"]
        tmpl["metadata"]["annotations"].update(patch["spec"]["template"]["metadata"]["annotations"])
        for pc in patch["spec"]["template"]["spec"]["containers"]:
            c = next(c for c in tmpl["spec"]["containers"] if c["name"] == pc["name"])
            for pe in pc["env"]:
                c["env"] = [e for e in c["env"] if e["name"] != pe["name"]] + [pe]
        self.deployment["metadata"]["generation"] += 1
        self._polls = 0

    def _advance(self) -> None:
        gen = self.deployment["metadata"]["generation"]
        st = self.deployment["status"]
        if st["observedGeneration"] == gen and st["updatedReplicas"] == 2 and st["availableReplicas"] == 2:
            return
        self._polls += 1
        if self._polls == 1:  # the controller saw the change: one new pod, old ones still serving
            self.deployment["status"] = {**copy.deepcopy(st), "observedGeneration": gen, "updatedReplicas": 1,
                                         "replicas": 3, "availableReplicas": 2,
                                         "conditions": [{"type": "Progressing", "status": "True",
                                                         "reason": "ReplicaSetUpdated"}]}
        elif self.version() in self.broken:
            self.deployment["status"]["conditions"] = [{"type": "Progressing", "status": "False",
                                                        "reason": "ProgressDeadlineExceeded",
                                                        "message": "ReplicaSet has timed out progressing."}]
            self.deployment["status"]["availableReplicas"] = 2
        else:
            self.deployment["status"] = self._done(gen)

    def close(self) -> None:
        self.server.shutdown()


def kubeconfig(tmp_path: Path, url: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "loop", "cluster": {"server": url}}],
        "users": [{"name": "deployer", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "test", "context": {"cluster": "loop", "user": "deployer"}}],
    }))
    return str(path)


@pytest.fixture
def two_versions(tmp_path: Path):
    """Champion v2 with v1 as its predecessor."""
    settings = load_settings(store=str(tmp_path / "store"), model="wine", spill_dir=str(tmp_path / "spill"))
    registry = Registry(LocalStore(tmp_path / "store"), "wine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(registry, diabetes_frame(), "target", LINEAR, onnx=False)
        add_version(registry, diabetes_frame(), "target", LINEAR, seed=1, onnx=False)
    return settings, registry


def test_cluster_rollout_patches_env_and_annotation_and_waits(tmp_path: Path, two_versions) -> None:
    settings, _ = two_versions
    api = FakeKubernetes("v1")
    try:
        result = deploy(settings, mode="cluster", kubeconfig=kubeconfig(tmp_path, api.url), poll_seconds=0.01,
                        timeout_seconds=5)
    finally:
        api.close()
    assert result.succeeded and not result.rolled_back
    assert (result.version, result.previous) == ("v2", "v1")
    verbs = [(c["verb"], c["path"]) for c in api.calls]
    assert verbs[0] == ("GET", PATH) and verbs[1] == ("PATCH", PATH)
    assert all(v == ("GET", PATH) for v in verbs[2:]) and len(verbs) >= 4
    patch = api.calls[1]
    assert patch["content_type"] == STRATEGIC
    assert patch["body"] == {"spec": {"template": {
        "metadata": {"annotations": {"flywheel.io/model-version": "v2"}},
        "spec": {"containers": [{"name": "serving", "env": [{"name": "MODEL_VERSION", "value": "v2"}]}]}}}}
    assert api.calls[0]["auth"] == "Bearer t0ken"
    assert api.version() == "v2"
    env = api.deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "FLYWHEEL_MODEL", "value": "wine"} in env, "the patch merges, it does not replace the env"


def test_failed_rollout_restores_the_previous_version(tmp_path: Path, two_versions) -> None:
    settings, registry = two_versions
    api = FakeKubernetes("v1", broken={"v2"})
    try:
        result = deploy(settings, mode="cluster", kubeconfig=kubeconfig(tmp_path, api.url), poll_seconds=0.01,
                        timeout_seconds=5)
    finally:
        api.close()
    assert not result.succeeded and result.rolled_back
    assert "progress deadline exceeded" in result.reason and "v1 restored" in result.reason
    patches = [c for c in api.calls if c["verb"] == "PATCH"]
    assert [p["body"] for p in patches] == [version_patch("v2"), version_patch("v1")]
    assert all(p["content_type"] == STRATEGIC for p in patches)
    assert api.version() == "v1"
    assert registry.champion().version == "v1", "the champion pointer follows what the cluster serves"


def test_rollout_timeout_is_a_failure(tmp_path: Path, two_versions) -> None:
    settings, _ = two_versions
    api = FakeKubernetes("v1")
    api._advance = lambda: None  # the controller never reacts
    try:
        result = deploy(settings, mode="cluster", kubeconfig=kubeconfig(tmp_path, api.url), poll_seconds=0.01,
                        timeout_seconds=0.3)
    finally:
        api.close()
    assert not result.succeeded and "timed out" in result.reason


def test_missing_deployment_is_reported(tmp_path: Path, two_versions) -> None:
    settings, _ = two_versions
    settings = settings.model_copy(update={"serving_deployment": "nope"})
    api = FakeKubernetes("v1")
    try:
        with pytest.raises(DeployError, match="flywheel/nope"):
            deploy(settings, mode="cluster", kubeconfig=kubeconfig(tmp_path, api.url), poll_seconds=0.01)
    finally:
        api.close()
    assert [c["verb"] for c in api.calls] == ["GET"]


def test_embedded_deploy_is_the_champion_pointer(two_versions) -> None:
    settings, _ = two_versions
    result = deploy(settings, mode="embedded")
    assert result.succeeded and result.mode == "embedded" and (result.version, result.previous) == ("v2", "v1")
    with pytest.raises(DeployError, match="promote v1"):
        deploy(settings, version="v1", mode="embedded")
