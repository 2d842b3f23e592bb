"""The distributed refit's TrainJob against a real kube-apiserver, with the chart's trainJob objects applied.

The Trainer's CRDs are installed from the vendored manifests (crds/, trimmed, with their source);
its controller cannot run here, so the test plays the controller's one part the refit step depends
on: it writes the TrainJob's ``Complete`` or ``Failed`` condition through the status subresource.
The refit step authenticates as KFP's step ServiceAccount with a TokenRequest token, so every call
it makes is decided by the chart's Role.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import trainjob
from components.distributed_xgb import ENGINE_TRAINJOB, Job, Piece, TrainingFailed
from components.settings import Settings, load_settings
from components.store import open_store
from tests.apiserver.cluster import DEPLOYER, KFP_NAMESPACE, Applied, can_i, helm_render, token_for, wait_for
from tests.apiserver.control_plane import ControlPlane

CRDS = Path(__file__).resolve().parent / "crds" / "trainer.kubeflow.org.yaml"
AS_STEP = f"--as=system:serviceaccount:{DEPLOYER[0]}:{DEPLOYER[1]}"
IMAGE = "registry.example/flywheel-components:1"


@pytest.fixture(scope="module")
def trainer(cluster: tuple[ControlPlane, Applied]) -> tuple[ControlPlane, list[dict[str, Any]]]:
    """The Trainer's CRDs, then the chart's trainJob objects (Role, RoleBinding, TrainingRuntime)."""
    cp, _ = cluster
    cp.kubectl("apply", "-f", str(CRDS))
    for crd in ("trainjobs", "trainingruntimes"):
        cp.kubectl("wait", "--for=condition=Established", f"crd/{crd}.trainer.kubeflow.org", "--timeout=30s")
    docs = [d for d in helm_render({"trainJob": {"enabled": True}})
            if d["metadata"]["name"] in ("flywheel-trainjob", "flywheel-xgboost")]
    assert {d["kind"] for d in docs} == {"Role", "RoleBinding", "TrainingRuntime"}
    cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    return cp, docs


@pytest.fixture(scope="module")
def step_client(trainer: tuple[ControlPlane, list[dict[str, Any]]]) -> Any:
    """An API client as the pipeline's step pods authenticate: KFP's runner ServiceAccount."""
    from kubernetes import config

    cp, _ = trainer
    return config.new_client_from_config(config_file=str(cp.kubeconfig(token_for(cp, *DEPLOYER), name="step")))


@pytest.fixture(scope="module")
def admin(trainer: tuple[ControlPlane, list[dict[str, Any]]]) -> Any:
    from kubernetes import client, config

    cp, _ = trainer
    return client.CustomObjectsApi(config.new_client_from_config(config_file=str(cp.kubeconfig())))


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    return load_settings(store=str(tmp_path / "store"), model="test", component_image=IMAGE,
                         trainer_namespace=KFP_NAMESPACE, trainer_runtime="TrainingRuntime/flywheel-xgboost",
                         **{"train_timeout_seconds": 60, **extra})


def _job(settings: Settings, name: str) -> Job:
    shares = [[Piece("training/test/x/train-0.parquet", 0, 0, 50)], [Piece("training/test/x/train-0.parquet", 0, 50, 100)]]
    return Job(open_store(settings.store, settings).uri, f"training/test/{name}", shares, ["a"], "y", [0, 1],
               {"objective": "binary:logistic"}, 5)


def _finish(api: Any, name: str, kind: str, reason: str, message: str) -> None:
    """What the Trainer's controller does when the JobSet ends: one condition through the status subresource."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    api.patch_namespaced_custom_object_status(
        trainjob.GROUP, trainjob.VERSION, KFP_NAMESPACE, trainjob.PLURAL, name,
        {"status": {"conditions": [{"type": kind, "status": "True", "reason": reason, "message": message,
                                    "lastTransitionTime": now}]}})


def _created(api: Any, name: str) -> dict[str, Any]:
    from kubernetes.client.exceptions import ApiException

    def get() -> dict[str, Any] | None:
        try:
            return api.get_namespaced_custom_object(trainjob.GROUP, trainjob.VERSION, KFP_NAMESPACE, trainjob.PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    return wait_for(get, what=f"TrainJob {name} to be created")


def _gone(api: Any, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        api.get_namespaced_custom_object(trainjob.GROUP, trainjob.VERSION, KFP_NAMESPACE, trainjob.PLURAL, name)
        return False
    except ApiException as exc:
        return exc.status == 404


@pytest.fixture
def running(step_client: Any) -> Iterator[Any]:
    """Run ``trainjob.run`` in a thread (it blocks until the TrainJob ends); yields a starter and its result box."""
    threads: list[threading.Thread] = []

    def start(job: Job, settings: Settings) -> dict[str, Any]:
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["outcome"] = trainjob.run(job, settings, api_client=step_client)
            except TrainingFailed as exc:
                box["error"] = str(exc)

        t = threading.Thread(target=target, daemon=True)
        t.start()
        threads.append(t)
        box["thread"] = t
        return box

    yield start
    for t in threads:
        t.join(timeout=90)


def test_the_step_may_create_follow_and_delete_trainjobs_and_nothing_more(trainer: Any) -> None:
    cp, _ = trainer
    for verb in ("create", "get", "watch", "delete"):
        assert can_i(cp, verb, "trainjobs.trainer.kubeflow.org", "-n", KFP_NAMESPACE, AS_STEP), verb
    for verb in ("list", "update", "patch"):
        assert not can_i(cp, verb, "trainjobs.trainer.kubeflow.org", "-n", KFP_NAMESPACE, AS_STEP), verb
    assert not can_i(cp, "patch", "trainjobs.trainer.kubeflow.org/status", "-n", KFP_NAMESPACE, AS_STEP)
    assert not can_i(cp, "create", "trainjobs.trainer.kubeflow.org", "-n", "default", AS_STEP)
    assert not can_i(cp, "create", "pods", "-n", KFP_NAMESPACE, AS_STEP)


def test_the_charts_runtime_is_the_xgboost_runtime_with_the_restricted_security_context(admin: Any) -> None:
    rt = admin.get_namespaced_custom_object(trainjob.GROUP, trainjob.VERSION, KFP_NAMESPACE, "trainingruntimes",
                                            "flywheel-xgboost")
    assert rt["spec"]["mlPolicy"] == {"numNodes": 1, "xgboost": {}}
    (node,) = rt["spec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert node["name"] == container["name"] == "node"  # the Trainer injects DMLC_* into the "node" container
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["memory"] == "8Gi"
    assert container["envFrom"] == [{"configMapRef": {"name": "flywheel-config"}}]
    assert not {e["name"] for e in container.get("env", [])} & {"DMLC_TRACKER_URI", "DMLC_TRACKER_PORT",
                                                                 "DMLC_TASK_ID", "DMLC_NUM_WORKER"}


def test_a_completed_trainjob_gives_the_workers_model_and_is_deleted(tmp_path: Path, admin: Any, running: Any) -> None:
    s = _settings(tmp_path)
    job = _job(s, "flywheel-refit-ok")
    box = running(job, s)
    created = _created(admin, "flywheel-refit-ok")
    sent = trainjob.manifest(job, s, "flywheel-refit-ok")
    assert created["spec"] == {**sent["spec"], "suspend": False}  # nothing Flywheel sent was pruned
    assert created["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime",
                                             "name": "flywheel-xgboost"}
    assert created["spec"]["trainer"]["numNodes"] == 2
    assert created["spec"]["trainer"]["args"] == [job.store, "training/test/flywheel-refit-ok"]
    store = open_store(s.store, s)  # the workers' part: rank 0's booster and each rank's record
    store.write(job.key("model.ubj"), b"booster")
    for rank in (0, 1):
        store.write(job.key(f"rank-{rank}.json"), json.dumps({"rank": rank, "rows": 50, "peak_rss_kib": 1}).encode())
    _finish(admin, "flywheel-refit-ok", "Complete", "JobsCompleted", "all nodes finished")
    box["thread"].join(timeout=60)
    assert "error" not in box, box.get("error")
    assert box["outcome"].booster == b"booster" and box["outcome"].engine == ENGINE_TRAINJOB
    assert [w["rank"] for w in box["outcome"].workers] == [0, 1]
    assert wait_for(lambda: _gone(admin, "flywheel-refit-ok"), what="TrainJob deleted")


def test_a_failed_trainjob_fails_the_refit_naming_it(tmp_path: Path, admin: Any, running: Any) -> None:
    s = _settings(tmp_path)
    box = running(_job(s, "flywheel-refit-bad"), s)
    _created(admin, "flywheel-refit-bad")
    _finish(admin, "flywheel-refit-bad", "Failed", "TrainingFailed", "node-1 exited with code 137")
    box["thread"].join(timeout=60)
    assert box["error"] == ("TrainJob kubeflow/flywheel-refit-bad failed: TrainingFailed: node-1 exited with code 137")
    assert wait_for(lambda: _gone(admin, "flywheel-refit-bad"), what="TrainJob deleted")


def test_a_trainjob_that_does_not_finish_in_time_fails_the_refit_and_is_deleted(tmp_path: Path, admin: Any,
                                                                                running: Any) -> None:
    s = _settings(tmp_path, train_timeout_seconds=3)
    box = running(_job(s, "flywheel-refit-slow"), s)
    box["thread"].join(timeout=60)
    assert box["error"] == "TrainJob kubeflow/flywheel-refit-slow did not finish within 3 s; it was deleted"
    assert wait_for(lambda: _gone(admin, "flywheel-refit-slow"), what="TrainJob deleted")  # foreground: the GC ends it


def test_an_unreachable_trainer_api_fails_the_refit_naming_the_job(tmp_path: Path) -> None:
    from kubernetes import client

    from components.net import free_port

    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg.retries = 0
    s = _settings(tmp_path)
    with pytest.raises(TrainingFailed, match=r"^TrainJob kubeflow/flywheel-refit-off: the Kubernetes API is "
                                             r"unreachable \(trying to create it: MaxRetryError\)$"):
        trainjob.run(_job(s, "flywheel-refit-off"), s, api_client=client.ApiClient(cfg))
