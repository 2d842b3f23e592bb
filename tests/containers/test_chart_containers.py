"""The chart and the images, tested together as real containers.

Given the chart rendered with the real Helm engine (values: this build's image tag, the S3
server's and the KFP API's addresses), the serving Deployment and the monitor CronJob are
started with podman exactly as rendered (tests/containers/pods.py), next to an S3 server
container (moto, from the project's locked environment) and a container running the KFP
API contract fake. Then:

* the serving container passes its own startup, liveness and readiness probes on its
  container IP and answers predictions there;
* every chart container runs as the chart's non-root user on a read-only root filesystem
  and can write only where the chart mounts a volume;
* the monitor job reads the prediction logs the serving container wrote to S3, stores its
  report, and starts a retrain through the KFP API: the package it uploads is the training
  pipeline compiled in its own image for the component image of this build;
* SIGTERM under traffic, with the chart's preStop hook and grace period, loses no
  prediction record;
* a serving container whose store is unreachable exits at once with one sentence naming it;
* `podman kube play` accepts the rendered Deployment as a whole pod spec and runs it;
* two worker containers of the component image, started as the chart's TrainingRuntime node with
  the ``DMLC_*`` variables Kubeflow Trainer's XGBoost runtime injects, train over the network the
  same model two local worker processes train from the same job.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pandas as pd
import pytest
import yaml

from components.data import REQUEST_ID
from components.model_runtime import records_of
from components.registry import Registry
from components.settings import Settings, load_settings
from components.store import open_store
from testkit.models import LOGISTIC, add_version, wine_frame
from tests.containers.pods import Container, ContainerSpec, podman, wait_ready
from tests.integration.k8s.k8s_support import find, helm_render, manifests

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "flywheel"  # tests/integration/k8s/k8s_support.py renders the release there
MODEL = "wine"
BUCKET = "flywheel"
STORE = f"s3://{BUCKET}/store"
DATASET = f"datasets/{MODEL}/wine.parquet"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "flywheel-test", "AWS_SECRET_ACCESS_KEY": "flywheel-test-secret"}
FEATURES = [c for c in wine_frame().columns if c != "target"]


def records(n: int, shift: float = 1.0, start: int = 0) -> list[dict[str, Any]]:
    """``n`` wine rows as request records; ``shift`` scales every numeric feature (drift)."""
    frame = wine_frame()[FEATURES]
    rows = frame.iloc[[(start + i) % len(frame) for i in range(n)]].copy()
    numeric = rows.select_dtypes("number").columns
    rows[numeric] = rows[numeric] * shift
    return records_of(rows)


@dataclass
class Cluster:
    """The rendered chart, the support containers and the S3 store they share."""

    prefix: str
    volumes: Path
    tag: str
    images: dict[str, str]
    s3_url: str = ""
    kfp_url: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    docs: list[dict] = field(default_factory=list)
    configmaps: dict[str, dict] = field(default_factory=dict)
    secrets: dict[str, dict] = field(default_factory=dict)
    started: list[Container] = field(default_factory=list)
    settings: Settings | None = None

    def spec(self, kind: str, name: str, container: str) -> ContainerSpec:
        doc = find(self.docs, kind, name)
        template = doc["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob" else doc["spec"]["template"]
        return ContainerSpec.from_pod(template["spec"], container, self.configmaps, self.secrets, template.get("metadata"))

    def start(self, spec: ContainerSpec, name: str) -> Container:
        c = Container(spec, f"{self.prefix}-{name}", self.volumes)
        self.started.append(c)
        return c.start()

    def support(self, name: str, command: list[str], port: int, ready_path: str) -> str:
        """A test-infrastructure container (S3 server, KFP fake): non-root, read-only, its URL."""
        cname = f"{self.prefix}-{name}"
        c = Container(ContainerSpec(name, self.images["support"], command, None, {"PYTHONPATH": "/srv"}, 10001, 10001,
                                    None, True, True, True, {}, {}, None, None, None, 5,
                                    extra=["--tmpfs", "/tmp:rw,mode=1777", "--volume", f"{REPO / 'tests'}:/srv/tests:ro",
                                           "--workdir", "/srv"]), cname, self.volumes)
        self.started.append(c)
        c.start()
        url = f"http://{c.ip}:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + ready_path, timeout=2).status_code < 500:
                    return url
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{name} container never answered on {url}:\n{c.logs()}"
            time.sleep(0.5)

    def store(self):
        return open_store(STORE, self.settings)

    def logged_ids(self, kind: str = "predictions") -> set[str]:
        """Every request id in the ``kind`` logs (predictions, feedback) the serving containers wrote to S3."""
        s3 = boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1")
        ids: set[str] = set()
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"store/{kind}/{MODEL}/")
        for page in pages:
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
                ids.update(pd.read_parquet(io.BytesIO(body))[REQUEST_ID].astype(str))
        return ids

    def kfp_calls(self, method: str | None = None, path: str | None = None) -> list[dict]:
        calls = httpx.get(f"{self.kfp_url}/_fake/calls", timeout=10).json()
        return [c for c in calls if (method is None or c["method"] == method) and (path is None or c["path"] == path)]


@pytest.fixture(scope="module")
def cluster(netns: str, tag: str, images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    volumes = tmp_path_factory.mktemp("volumes")
    volumes.chmod(0o755)  # the containers' users reach their emptyDirs through it
    c = Cluster(f"fwct-{uuid.uuid4().hex[:6]}", volumes, tag, images)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CREDENTIALS.items():
            mp.setenv(key, value)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        try:
            c.s3_url = c.support("s3", ["moto_server", "-H", "0.0.0.0", "-p", "5000"], 5000, "/")
            c.kfp_url = c.support("kfp", ["python", "-m", "tests.containers.kfp_server", "--port", "8888"], 8888,
                                  "/apis/v2beta1/healthz")
            values = {
                "image": {"tag": tag, "pullPolicy": "IfNotPresent"},
                "config": {"store": STORE, "model": MODEL, "s3": {"endpointUrl": c.s3_url},
                           "kfp": {"host": c.kfp_url},
                           "monitoring": {"minRows": 200, "cooldownMinutes": 0, "driftShareThreshold": 0.3}},
            }
            c.values = values
            c.docs = manifests(helm_render(values))
            # A pod's configMapRef resolves in its own namespace (the chart may render copies elsewhere).
            c.configmaps = {d["metadata"]["name"]: d for d in c.docs
                            if d["kind"] == "ConfigMap" and d["metadata"].get("namespace") == NAMESPACE}
            # The one object the chart expects to exist (never creates): the storage credentials.
            c.secrets = {"flywheel-s3": {"kind": "Secret", "metadata": {"name": "flywheel-s3"}, "stringData": CREDENTIALS}}
            c.settings = load_settings(store=STORE, model=MODEL, s3_endpoint_url=c.s3_url, s3_region="us-east-1")
            boto3.client("s3", endpoint_url=c.s3_url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
            store = c.store()
            frame = wine_frame()
            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            store.write(DATASET, buf.getvalue())
            add_version(Registry(store, MODEL), frame, "target", LOGISTIC,
                        manifest={"dataset": {"source": DATASET, "target": "target", "name": MODEL}})
            yield c
        finally:
            for container in reversed(c.started):
                container.remove()


@pytest.fixture(scope="module")
def serving(cluster: Cluster) -> Container:
    """The serving Deployment's container, started as rendered, Ready by its own probes."""
    c = cluster.start(cluster.spec("Deployment", "flywheel-serving", "serving"), "serving")
    seen = wait_ready(c, deadline=90)
    assert seen["readiness"][-1] == "HTTP 200"
    return c


def test_serving_container_passes_its_probes_on_its_ip_and_answers_predictions(cluster: Cluster, serving: Container):
    spec = serving.spec
    assert spec.args == ["--host", "0.0.0.0", "--port", "3000"]
    assert not serving.ip.startswith("127."), "probes must reach the container on its own IP"
    for probe in (spec.startup, spec.liveness, spec.readiness):
        ok, what = probe.check(serving.ip)
        assert ok, f"{probe.path}: {what}"
    r = httpx.post(f"http://{serving.ip}:3000/predict", json={"records": records(5)}, timeout=30)
    assert r.status_code == 200, r.text
    answers = r.json()
    assert len(answers) == 5 and all(a["prediction"].startswith("class_") and a["request_id"] for a in answers)


WRITE_CHECK = """
import json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        name = os.path.join(path, ".flywheel-write-check")
        with open(name, "w") as f:
            f.write("x")
        os.remove(name)
        out[path] = True
    except OSError:
        out[path] = False
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "writable": out}))
"""


def test_chart_containers_run_non_root_read_only_and_write_only_to_their_volumes(cluster: Cluster, serving: Container):
    info = serving.inspect()
    assert info["Config"]["User"] == "10001:10001"
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["HostConfig"]["CapDrop"] and not info["HostConfig"]["CapAdd"]
    top = [p for p in serving.exec("sh", "-c", "ls -d /*/ /opt/venv/lib/python3*/site-packages").stdout.split()
           if p.rstrip("/") not in ("/dev", "/proc", "/sys")]
    mounts = list(serving.spec.mounts)
    proc = serving.exec("python", "-c", WRITE_CHECK, *top, *mounts)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["uid"], result["gid"]) == (10001, 10001)
    writable = {p.rstrip("/") for p, ok in result["writable"].items() if ok}
    assert writable == set(mounts), f"writable outside the chart's volumes: {writable - set(mounts)}"

    monitor = cluster.spec("CronJob", "flywheel-monitor", "monitor")
    assert (monitor.user, monitor.group, monitor.read_only_root, monitor.drop_all) == (10001, 10001, True, True)
    assert set(monitor.mounts) == {"/tmp"}  # no Evidently UI in these values: no workspace volume


def _traffic(url: str, shift: float, n: int, per_request: int = 50) -> dict[str, Any]:
    """Serve ``n`` wine rows; request id -> the row's true label."""
    labels = wine_frame()["target"]
    ids: dict[str, Any] = {}
    for i in range(0, n, per_request):
        r = httpx.post(f"{url}/predict", json={"records": records(per_request, shift, i)}, timeout=60)
        assert r.status_code == 200, r.text
        ids.update((a["request_id"], labels.iloc[(i + j) % len(labels)]) for j, a in enumerate(r.json()))
    return ids


def _wait_logged(cluster: Cluster, ids: set[str], kind: str = "predictions", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ids <= cluster.logged_ids(kind):
        assert time.monotonic() < deadline, f"{kind} logs never reached S3"
        time.sleep(1)


def test_monitor_job_reads_the_logs_writes_its_report_and_starts_a_retrain_on_kfp(cluster: Cluster, serving: Container):
    url = f"http://{serving.ip}:3000"
    served = _traffic(url, shift=1.6, n=400)
    # Labels arrive for the drifted traffic: without new labelled data the monitor only raises an alarm.
    with httpx.Client(timeout=30) as http:
        for request_id, label in served.items():
            r = http.post(f"{url}/feedback", json={"request_id": request_id, "label": label})
            assert r.status_code == 200, r.text
    _wait_logged(cluster, set(served))
    _wait_logged(cluster, set(served), "feedback")

    spec = cluster.spec("CronJob", "flywheel-monitor", "monitor")
    assert spec.command == ["flywheel", "monitor"] and not spec.args
    job = cluster.start(spec, "monitor")
    code = job.wait(timeout=900)
    log = job.logs()
    assert code == 0, log

    store = cluster.store()
    summaries = [k for k in store.list(f"monitoring/{MODEL}/") if k.endswith("summary.json")]
    assert len(summaries) == 1, log
    summary = json.loads(store.read(summaries[0]))
    assert store.exists(summaries[0].replace("summary.json", "report.html"))
    assert summary["rows"]["evaluated"] >= 400
    assert summary["decision"]["retrain"] is True, summary["decision"]
    # Without the Evidently UI the monitor keeps no workspace (the chart puts one on the UI's claim).
    assert "evidently_snapshots" not in summary["outputs"] and summary["outputs"]["report"].endswith("report.html")

    # The package: the training pipeline compiled inside the monitor image, for this build's component image.
    (upload,) = cluster.kfp_calls("POST", "/apis/v2beta1/pipelines/upload")
    package = base64.b64decode(upload["files"]["uploadfile"])
    ir, platform = list(yaml.safe_load_all(package))
    assert ir["pipelineInfo"]["name"] == "flywheel-training"
    executors = ir["deploymentSpec"]["executors"].values()
    assert {e["container"]["image"] for e in executors} == {cluster.images["components"]}
    assert ir["defaultPipelineRoot"] == f"{STORE}/pipeline_root"
    assert "flywheel-s3" in json.dumps(platform) and cluster.s3_url in package.decode()

    (run,) = cluster.kfp_calls("POST", "/apis/v2beta1/runs")
    body = run["json"]
    params = body["runtime_config"]["parameters"]
    # The retrain reads the champion's dataset plus a part of the labelled production rows beside it (no copy).
    assert params["source"] == DATASET and params["target"] == "target"
    assert params["additions"] == [f"datasets/{MODEL}-feedback/{body['display_name']}.parquet"]
    part = pd.read_parquet(io.BytesIO(store.read(params["additions"][0])))
    assert len(part) == len(served) and set(part[REQUEST_ID]) == set(served)
    assert body["runtime_config"]["pipeline_root"] == f"{STORE}/pipeline_root"
    assert body["display_name"].startswith(f"{MODEL}-retrain")
    (exp,) = cluster.kfp_calls("POST", "/apis/v2beta1/experiments")
    assert exp["json"]["display_name"] == "flywheel"
    trigger = json.loads(store.read(next(k for k in store.list(f"triggers/{MODEL}/") if k.endswith(".json"))))
    assert trigger["status"] == "running" and trigger["run_id"]


def test_sigterm_under_traffic_with_the_charts_grace_period_loses_no_prediction(cluster: Cluster):
    c = cluster.start(cluster.spec("Deployment", "flywheel-serving", "serving"), "serving-sigterm")
    wait_ready(c, deadline=90)
    url = f"http://{c.ip}:3000"
    served: set[str] = set()
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        i = 0
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post(f"{url}/predict", json={"records": records(1, start=i)})
                except httpx.HTTPError as exc:  # refused once the server has closed its socket
                    failures.append(type(exc).__name__)
                    time.sleep(0.05)
                    continue
                if r.status_code == 200:
                    served.update(a["request_id"] for a in r.json())
                else:
                    failures.append(f"HTTP {r.status_code}")
                i += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(served) < 40:  # the SIGTERM lands under traffic: wait until it flows
        assert time.monotonic() < deadline, f"no traffic answered within 60 s: {failures[:5]}"
        time.sleep(0.05)
    before = len(served)
    code, seconds = c.stop()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert before > 0, failures[:5]
    assert code == 0, f"exit {code} after {seconds:.1f} s (grace {c.spec.grace_seconds} s):\n{c.logs()}"
    assert seconds < c.spec.grace_seconds
    missing = served - cluster.logged_ids()
    assert not missing, f"{len(missing)} of {len(served)} served predictions are not in the store"
    # a part that waited on disk for the store ends in .spilled
    left = [p for p in c.volume_dirs["/var/lib/flywheel/spill"].rglob("*")
            if p.name.endswith((".parquet", ".jsonl", ".spilled"))]
    assert not left, f"records left in the spill dir: {left}"


def test_serving_container_whose_store_is_unreachable_exits_at_once_naming_it(cluster: Cluster):
    """Issue 21.5: not a container that stays up with /healthz timing out until the startup probe
    gives up (24 x 5 s), but PID 1 (`flywheel serve`) exiting 1 with one sentence naming the store."""
    spec = cluster.spec("Deployment", "flywheel-serving", "serving")
    closed = f"http://{cluster.s3_url.split('//')[1].split(':')[0]}:1"  # the S3 container's address, a closed port
    spec.env["AWS_ENDPOINT_URL"] = closed
    c = cluster.start(spec, "serving-no-store")
    started = time.monotonic()
    code = c.wait(timeout=90)
    took = time.monotonic() - started
    assert code == 1, f"exit {code}:\n{c.logs()}"
    last = c.logs().strip().splitlines()[-1]
    assert last.startswith(f"error: the service cannot start: store {STORE} is unreachable (endpoint {closed})"), c.logs()
    assert took < spec.startup.period * spec.startup.failure_threshold / 2, f"{took:.0f} s"


def test_podman_kube_play_runs_the_rendered_deployment(cluster: Cluster, tmp_path: Path):
    deployment = find(cluster.docs, "Deployment", "flywheel-serving")
    path = tmp_path / "serving.yaml"
    path.write_text(yaml.safe_dump_all([cluster.configmaps["flywheel-config"], deployment], sort_keys=False))
    # The Secret the chart expects to exist, as podman 4.3's kube play reads one: a podman secret
    # holding a JSON map of key to base64 value (a kind: Secret document in the YAML is not read).
    secret = tmp_path / "flywheel-s3.json"
    secret.write_text(json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in CREDENTIALS.items()}))
    podman("secret", "rm", "flywheel-s3", check=False)
    podman("secret", "create", "flywheel-s3", str(secret))
    proc = podman("kube", "play", str(path), check=False, timeout=600)
    try:
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.split()
        ctr = lines[lines.index("Container:") + 1]
        cfg = json.loads(podman("inspect", ctr).stdout)[0]
        assert cfg["Config"]["User"] == "10001:10001" and cfg["HostConfig"]["ReadonlyRootfs"] is True
        assert cfg["Config"]["Cmd"][-4:] == ["--host", "0.0.0.0", "--port", "3000"]
        ip = cfg["NetworkSettings"]["IPAddress"] or next(n["IPAddress"] for n in cfg["NetworkSettings"]["Networks"].values())
        spec = cluster.spec("Deployment", "flywheel-serving", "serving")
        deadline = time.monotonic() + 120
        while not spec.readiness.check(ip)[0]:
            assert time.monotonic() < deadline, podman("logs", ctr, check=False).stderr[-3000:]
            time.sleep(2)
    finally:
        podman("kube", "down", str(path), check=False)
        podman("secret", "rm", "flywheel-s3", check=False)


# As Kubeflow Trainer's XGBoost runtime sets them: rank 0's node by its DNS name (<job>-node-0-0.<job>), a fixed port.
TRACKER_PORT = 9999


def test_distributed_refit_worker_containers_train_the_model_local_workers_train(cluster: Cluster, tmp_path: Path):
    import dataclasses

    import numpy as np

    from components import distributed_xgb as dx
    from components import train
    from components.data import DatasetSpec, infer_schema, normalise
    from components.settings import process_environment

    runtime = find(manifests(helm_render({**cluster.values, "trainJob": {"enabled": True}})), "TrainingRuntime",
                   "flywheel-xgboost", "kubeflow")
    template = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    node = ContainerSpec.from_pod(template["spec"], "node", cluster.configmaps, cluster.secrets, template.get("metadata"))
    assert node.image == cluster.images["components"] and node.read_only_root and node.drop_all

    spec = DatasetSpec(DATASET, "target", task="classification")
    frame = normalise(wine_frame(), spec)
    schema = infer_schema(frame, spec)
    path = tmp_path / "train.parquet"
    frame.to_parquet(path, index=False)
    # the search's XGBoost model: its preprocessing runs in the workers on Arrow batches, without scikit-learn
    candidate = next(c for c in train.candidates("classification") if c["family"] == "xgboost")
    model = train.make_model(schema, {**candidate, "params": {**candidate["params"], "n_estimators": 20}}, 0)
    settings = cluster.settings.model_copy(update={"train_workers": 2})
    jobs = {how: dx.prepare(model, [str(path)], schema, settings, 2, f"ct-{how}-{uuid.uuid4().hex[:6]}", 1000)
            for how in ("containers", "local")}
    assert jobs["containers"][0].native is not None

    job, prep, _ = jobs["containers"]
    host = f"{cluster.prefix}-refit-node-0-0.{cluster.prefix}-refit"
    workers: list[Container] = []
    for rank in range(2):
        env = {**node.env, **dx.dmlc_env(rank, 2, host, TRACKER_PORT)}
        extra = ["--hostname", host] if rank == 0 else ["--add-host", f"{host}:{workers[0].ip}"]
        workers.append(cluster.start(dataclasses.replace(node, args=[job.store, job.prefix], env=env, extra=extra),
                                     f"refit-{rank}"))
    codes = [w.wait(timeout=300) for w in workers]
    assert codes == [0, 0], "\n".join(w.logs() for w in workers)
    in_containers = dx.collect(job, cluster.store(), dx.ENGINE_TRAINJOB)
    assert [w["rows"] for w in in_containers.workers] == [89, 89]

    local_job, local_prep, _ = jobs["local"]
    local = dx.run_local(local_job, settings, 300, process_environment())
    X = frame[schema.feature_names]
    np.testing.assert_allclose(dx.assemble(model, prep, in_containers.booster, schema.classes).predict_proba(X),
                               dx.assemble(model, local_prep, local.booster, schema.classes).predict_proba(X), atol=1e-6)
