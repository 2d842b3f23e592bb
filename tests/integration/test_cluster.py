"""`flywheel submit` and `flywheel schedule` against a loopback stand-in for the KFP v2beta1 API."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from components.data import DatasetSpec
from components.settings import ConfigError, load_settings
from pipelines.cluster import kfp_cron, schedule, submit
from pipelines.kfp_client import KFPError
from tests.integration.kfp_api.fake_kfp import FakeKFP

SPEC = DatasetSpec("s3://flywheel/datasets/demo/", "churned", timestamp="event_time", name="demo")


@pytest.fixture
def api():
    with FakeKFP() as fake:
        yield fake


@pytest.fixture
def cluster_settings(api, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.flywheel.svc:9000")
    return load_settings(store="s3://flywheel/store", kfp_host=api.url, kfp_experiment="flywheel", model="demo")


def requests(api):
    return [(c.method, c.path) for c in api.requests if not c.path.endswith("/healthz")]


def test_submit_uploads_the_compiled_pipeline_and_starts_a_run(api, cluster_settings):
    out = submit(cluster_settings, SPEC, image="registry.example/flywheel:7", run_name="demo-run-1")
    assert api.requests[0].path == "/apis/v2beta1/healthz"
    assert ("POST", "/apis/v2beta1/pipelines/upload") in requests(api)
    assert ("POST", "/apis/v2beta1/experiments") in requests(api)
    runs = api.calls("POST", "/apis/v2beta1/runs")
    assert len(runs) == 1 and out["run_id"] == next(iter(api.runs))
    body = runs[0].json
    assert body["display_name"] == "demo-run-1"
    params = body["runtime_config"]["parameters"]
    assert params["source"] == SPEC.source and params["target"] == "churned" and params["timestamp"] == "event_time"
    assert params["store"] == "s3://flywheel/store" and params["run"] == "demo-run-1" and params["model"] == "demo"
    assert body["pipeline_version_reference"]["pipeline_version_id"] in api.versions
    # the uploaded package is the compiled pipeline with its Kubernetes settings
    ir, platform = list(yaml.safe_load_all(next(iter(api.packages.values()))))
    assert ir["pipelineInfo"]["name"] == "flywheel-training"
    assert ir["defaultPipelineRoot"] == "s3://flywheel/store/pipeline_root"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-ingest"]["secretAsEnv"][0]["secretName"] == "flywheel-s3"
    images = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/flywheel:7"}
    envs = ir["deploymentSpec"]["executors"]["exec-ingest"]["container"]["env"]
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://minio.flywheel.svc:9000"} in envs


def test_an_unchanged_package_is_not_uploaded_twice(api, cluster_settings):
    first = submit(cluster_settings, SPEC, run_name="a")
    versions_after_first = len(api.versions)
    second = submit(cluster_settings, SPEC, run_name="b")
    assert first["uploaded"] and not second["uploaded"]
    assert first["pipeline_version"] == second["pipeline_version"]
    assert len(api.versions) == versions_after_first and len(api.runs) == 2
    assert not api.calls("POST", "/apis/v2beta1/pipelines/upload_version")[1:]  # at most the first run uploaded


def test_wait_reports_the_final_state(api, cluster_settings):
    import threading

    def finish() -> None:
        import time

        while not api.runs:
            time.sleep(0.05)
        api.set_run_state(next(iter(api.runs)), "FAILED")

    threading.Thread(target=finish, daemon=True).start()
    out = submit(cluster_settings, SPEC, wait=True, timeout=30, poll=0.1)
    assert out["state"] == "FAILED"
    assert api.calls("GET", f"/apis/v2beta1/runs/{out['run_id']}")


def test_schedule_is_idempotent_by_name(api, cluster_settings):
    first = schedule(cluster_settings, SPEC, "nightly", "0 3 * * *")
    again = schedule(cluster_settings, SPEC, "nightly", "0 3 * * *")
    assert first["recurring_run_id"] == again["recurring_run_id"] and len(api.recurring) == 1
    rr = next(iter(api.recurring.values()))
    assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert rr["max_concurrency"] in ("1", 1) and rr["runtime_config"]["parameters"]["target"] == "churned"


def test_cron_validation():
    assert kfp_cron("*/15 * * * *") == "0 */15 * * * *"
    assert kfp_cron("30 0 3 * * *") == "30 0 3 * * *"
    with pytest.raises(ConfigError, match="--cron 'every day'"):
        kfp_cron("every day")


def test_a_local_store_is_refused(api):
    s = load_settings(store="/tmp/local-store", kfp_host=api.url)
    with pytest.raises(ConfigError, match="cannot read a local directory"):
        submit(s, SPEC)
    assert api.requests == []


def test_api_down_is_one_sentence(cluster_settings, api):
    api.down()
    with pytest.raises(KFPError, match="unreachable"):
        submit(cluster_settings, SPEC)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_cli_submit_and_its_errors(api):
    env = {"FLYWHEEL_STORE": "s3://flywheel/store", "AWS_ENDPOINT_URL": "http://minio:9000"}
    ok = _cli("submit", "--data", SPEC.source, "--target", "churned", "--host", api.url, env=env)
    assert ok.returncode == 0, ok.stderr
    assert f"/#/runs/details/{next(iter(api.runs))}" in ok.stdout
    no_host = _cli("submit", "--data", SPEC.source, "--target", "churned", env={**env, "FLYWHEEL_KFP_HOST": ""})
    assert no_host.returncode == 1 and "--host" in no_host.stderr and "Traceback" not in no_host.stderr
    api.down()
    down = _cli("submit", "--data", SPEC.source, "--target", "churned", "--host", api.url, env=env)
    assert down.returncode == 1 and f"KFP API at {api.url} is unreachable" in down.stderr.replace("\n", "")
    assert "Traceback" not in down.stderr


def test_cli_submit_takes_the_run_settings_from_here_and_says_which_the_steps_take_from_the_cluster(api):
    env = {"FLYWHEEL_STORE": "s3://flywheel/store", "AWS_ENDPOINT_URL": "http://minio:9000", "FLYWHEEL_MIN_ACCURACY": "0.9",
           "FLYWHEEL_PARALLELISM": "2", "FLYWHEEL_DEPLOY_TIMEOUT_SECONDS": "600"}
    ok = _cli("submit", "--data", SPEC.source, "--target", "churned", "--host", api.url, env=env)
    assert ok.returncode == 0, ok.stderr
    [run] = api.calls("POST", "/apis/v2beta1/runs")
    assert run.json["runtime_config"]["parameters"]["min_accuracy"] == 0.9  # the promotion floor set here guards the run
    ir = next(yaml.safe_load_all(next(iter(api.packages.values()))))
    assert ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]["for-loop-2"]["iteratorPolicy"]["parallelismLimit"] == 2
    note = " ".join(ok.stderr.split())
    assert "note: the run's steps take deploy_timeout_seconds from ConfigMap flywheel-config" in note


def test_cli_submit_refuses_a_setting_only_the_embedded_runner_takes(api):
    env = {"FLYWHEEL_STORE": "s3://flywheel/store", "FLYWHEEL_WARM_TASKS": "false"}
    out = _cli("submit", "--data", SPEC.source, "--target", "churned", "--host", api.url, env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "setting 'warm_tasks' is False (FLYWHEEL_WARM_TASKS), which a cluster run cannot apply" in " ".join(out.stderr.split())
    assert not api.calls("POST")


def test_each_scheduled_run_records_under_its_own_id(api, cluster_settings, tmp_path):
    from components.runtime import JOB_ID, run_id, run_key
    from pipelines.compile import compile_pipeline
    from pipelines.training import ClusterOptions

    schedule(cluster_settings, SPEC, "nightly", "0 3 * * *")
    rr = next(iter(api.recurring.values()))
    run = rr["runtime_config"]["parameters"]["run"]
    assert run == f"nightly-{JOB_ID}"
    # every step that records under the run gets KFP's job id as a whole input value (the only form the backend resolves)
    ir = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", "img:1", ClusterOptions(), None).read_text()))
    tasks = {**ir["root"]["dag"]["tasks"], **ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]}
    tasks.update(next(c["dag"]["tasks"] for n, c in ir["components"].items() if "condition" in n))
    for name in ("record-run", "fingerprint", "champion", "register", "deploy"):
        job = tasks[name]["inputs"]["parameters"]["job"]
        assert job == {"runtimeValue": {"constant": JOB_ID}}, name
    keys = {run_key("demo", run_id(run, job)) for job in ("3f2a-run-1", "9c41-run-2")}
    assert keys == {"runs/demo/nightly-3f2a-run-1", "runs/demo/nightly-9c41-run-2"}
    assert run_id("manual-run", "3f2a") == "manual-run"  # a named run keeps its name
