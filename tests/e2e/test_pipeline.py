"""The whole training pipeline through kfp.local (KFP's own local runner), and its compiled form."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.data import DatasetSpec
from components.registry import Registry
from components.settings import load_settings
from components.store import open_store
from components.synthetic import churn
from pipelines.local.runner import PipelineFailed, run_training
from testkit.meters import file_opens
from testkit.models import unscorable_model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    settings = load_settings(store=str(root / "store"), pipeline_root=str(root / "kfp"), model="churn", cv_folds=2)
    data = root / "data.csv"
    churn(1500, seed=11).to_csv(data, index=False)
    spec = DatasetSpec(str(data), "churned", timestamp="event_time")
    first = run_training(spec, settings)
    with file_opens(data) as opens:  # any process that opens the data file, as the kernel reports it
        second = run_training(spec, settings)
    second["data_file_opens"] = dict(opens)
    return settings, spec, data, first, second


def test_first_run_registers_and_promotes(world):
    settings, spec, _, first, _ = world
    reg = Registry(open_store(settings.store, settings), "churn")
    assert first["version"] == "v1" and first["promoted"] and not first["cached"]
    assert reg.champion().version == "v1"
    manifest = reg.manifest("v1")
    assert manifest["fingerprint"] == first["fingerprint"] and manifest["run_id"] == first["run"]
    assert manifest["dataset"]["source"] == spec.source and manifest["dataset"]["timestamp"] == "event_time"
    assert {"model.joblib", "schema.json", "metrics.json", "reference.parquet", "card.md", "onnx.json"} <= set(manifest["files"])
    metrics = reg.metrics("v1")
    assert metrics["holdout"]["roc_auc"] > 0.6 and metrics["primary_metric"] == "balanced_accuracy"
    schema = reg.schema("v1")
    assert "customer_id" in schema.id_columns and schema.timestamp == "event_time"
    status = json.loads(reg.store.read(f"runs/churn/{first['run']}/status.json"))
    assert status["state"] == "SUCCEEDED" and status["error"] is None


def test_every_task_of_a_run_was_forked_warm_from_the_task_server(world):
    *_, first, _ = world
    log = Path(first["log"]).read_text()
    executed = re.findall(r"Executing task .*'(\S+)'", log)
    forked = re.findall(r"task server: forked task \d+: python -m kfp.dsl.executor_main", log)
    assert len(executed) >= 12 and len(forked) == len(executed)  # none fell back to a new interpreter


def test_run_artifacts_are_kfp_artifacts(world):
    settings, *_ = world
    root = __import__("pathlib").Path(settings.pipeline_root)
    outputs = {p.name for p in root.rglob("*") if p.is_file()}
    # Dataset, Model, Metrics, Markdown and HTML artifacts were written (Metrics live in metadata)
    assert {"dataset", "train", "holdout", "model", "report"} <= outputs


def test_second_run_on_same_data_is_served_from_cache(world):
    settings, _, _, first, second = world
    reg = Registry(open_store(settings.store, settings), "churn")
    assert first["cache_hits"] == []
    # the expensive steps come from kfp.local's cache; the steps that look at the world never do
    assert {"ingest", "features", "search-space", "train", "refit"} <= set(second["cache_hits"])
    assert {"fingerprint", "champion", "record-run"}.isdisjoint(second["cache_hits"])
    assert second["cached"] is True
    # nothing read the data again: the checks before the run and the fingerprint step used the
    # cached preview and content hash (same size and mtime), and ingest came from the cache
    assert second["data_file_opens"] == {}
    assert second["version"] == first["version"] and second["fingerprint"] == first["fingerprint"]
    assert reg.versions() == ["v1"]  # nothing retrained, nothing re-registered


def test_changed_data_is_never_served_from_cache(world):
    settings, spec, data, first, _ = world
    churn(1500, seed=12).to_csv(data, index=False)  # same shape, other rows
    third = run_training(spec, settings)
    assert not third["cached"] and third["fingerprint"] != first["fingerprint"]
    assert not {"ingest", "features", "train", "refit", "register"} & set(third["cache_hits"])
    assert third["version"] == "v2"
    reg = Registry(open_store(settings.store, settings), "churn")
    assert reg.decision("v2")["champion_version"] == "v1"  # judged against the champion on the same holdout


def test_failed_run_changes_nothing(world, tmp_path):
    settings, *_ = world
    reg = Registry(open_store(settings.store, settings), "churn")
    before_versions, before_champion = reg.versions(), reg.champion().version
    leaky = churn(800, seed=13)
    leaky["outcome"] = leaky["churned"].map({0: "stayed", 1: "left"})
    path = tmp_path / "leaky.csv"
    leaky.to_csv(path, index=False)
    with pytest.raises(PipelineFailed, match="step validate failed: .*'outcome' leaks the target"):
        run_training(DatasetSpec(str(path), "churned"), settings)
    assert reg.versions() == before_versions and reg.champion().version == before_champion


def test_compiled_pipeline_has_every_stage_fanout_retries_and_platform(tmp_path):
    out = tmp_path / "p.yaml"
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "compile", "--output", str(out), "--image",
                           "registry.example/flywheel:9", "--node-selector", "pool=ml", "--toleration", "ml:NoSchedule"],
                          capture_output=True, text=True, check=True)
    assert "wrote" in proc.stdout
    ir, platform = list(yaml.safe_load_all(out.read_text()))
    executors = ir["deploymentSpec"]["executors"]
    stages = {"fingerprint", "champion", "ingest", "validate", "features", "search-space", "train", "refit",
              "evaluate", "register", "deploy", "record-run"}
    assert {f"exec-{s}" for s in stages} <= set(executors)
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/flywheel:9"}
    tasks = ir["root"]["dag"]["tasks"]
    run_dag = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert "record-run" in tasks and tasks["record-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    search = run_dag["for-loop-2"]
    assert search["parameterIterator"] and ir["components"]["comp-for-loop-2"]["dag"]["tasks"]["train"]
    assert search["iteratorPolicy"]["parallelismLimit"] == 4
    assert run_dag["ingest"]["retryPolicy"]["maxRetryCount"] == 3
    assert run_dag["fingerprint"]["cachingOptions"] == {}  # never cached
    assert run_dag["ingest"]["cachingOptions"]["enableCache"] is True
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-ingest", "exec-train", "exec-register", "exec-deploy"):
        assert k8s[name]["secretAsEnv"][0]["secretName"] == "flywheel-s3"
        assert k8s[name]["nodeSelector"]["labels"] == {"pool": "ml"}
        assert k8s[name]["tolerations"][0]["key"] == "ml"
        assert k8s[name]["securityContext"]["runAsNonRoot"] is True
    resources = executors["exec-train"]["container"]["resources"]
    assert resources["cpuRequest"] == 1 and resources["memoryLimit"] > 0


def flywheel(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "{tmp}/missing.csv", "--target", "y"], "missing.csv"),
        (["--data", "{tmp}/data.csv", "--target", "nope"], "target column 'nope' is not in"),
        (["--data", "{tmp}/empty.csv", "--target", "y"], "empty.csv"),
        (["--data", "{tmp}/data.csv", "--target", "churned", "--store", "gs://bucket"], "store URI 'gs://bucket'"),
        (["--data", "{tmp}/data.csv", "--target", "churned", "--store", "s3://flywheel/x"], "s3://flywheel/x is unreachable"),
        (["--data", "{tmp}/data.csv", "--target", "churned", "--task", "clustering"], "--task"),
    ],
)
def test_cli_bad_input_is_one_clear_sentence(tmp_path, args, message):
    churn(200, seed=1).to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "empty.csv").write_text("")
    proc = flywheel("train", *[a.format(tmp=tmp_path) for a in args], "--model", "m",
                    env={"FLYWHEEL_STORE": str(tmp_path / "store"), "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                         "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "FLYWHEEL_S3_MAX_ATTEMPTS": "1"})
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "store" / "registry").exists()  # nothing registered


def test_a_champion_that_cannot_be_loaded_or_scored_fails_the_run_and_stays(world, tmp_path):
    settings, *_ = world
    reg = Registry(open_store(settings.store, settings), "churn")
    champion, versions = reg.champion().version, reg.versions()
    key = reg.key(champion, "model.joblib")
    original = reg.store.read(key)
    fresh = tmp_path / "fresh.csv"
    churn(1500, seed=14).to_csv(fresh, index=False)
    spec = DatasetSpec(str(fresh), "churned", timestamp="event_time")
    try:
        reg.store.write(key, b"not a pickle")  # the fault: the champion's model object is damaged
        with pytest.raises(PipelineFailed, match=f"step evaluate failed: champion {champion} cannot be loaded"):
            run_training(spec, settings)
        assert reg.champion().version == champion and reg.versions() == versions

        reg.store.write(key, unscorable_model())  # the fault: it loads but cannot score the holdout
        with pytest.raises(PipelineFailed, match=f"step evaluate failed: champion {champion} cannot be scored on the holdout"):
            run_training(spec, settings)
        assert reg.champion().version == champion and reg.versions() == versions
    finally:
        reg.store.write(key, original)
    runs = sorted({k.split("/")[2] for k in reg.store.list("runs/churn/") if k.endswith("/status.json")})
    failed = [json.loads(reg.store.read(f"runs/churn/{r}/status.json")) for r in runs]
    assert sum(1 for s in failed if s["state"] != "SUCCEEDED" and s["error"]["step"] == "evaluate") == 2


def test_step_records_say_what_ran_and_what_came_from_the_cache(world):
    settings, _, _, first, second = world
    store = open_store(settings.store, settings)
    from components import status as steps

    ran = steps.read_all(store, "churn", first["run"])
    assert {"fingerprint", "champion", "ingest", "validate", "features", "search-space", "refit", "evaluate",
            "register"} <= set(ran) and any(name.startswith("train-") for name in ran)
    assert all(r.outcome == "succeeded" for r in ran.values())
    assert ran["ingest"].cache_key and ran["ingest"].cache_key == steps.cache_key(fingerprint=first["fingerprint"])
    again = steps.read_all(store, "churn", second["run"])
    assert {"fingerprint", "champion", "register"} <= set(again) and "ingest" not in again  # cached: never executed


def test_without_warm_tasks_and_search_packing_a_run_relies_on_no_kfp_local_internal(tmp_path):
    """FLYWHEEL_WARM_TASKS=false and FLYWHEEL_LOCAL_SEARCH_PACKING=false: what an upgraded kfp would be run with."""
    settings = load_settings(store=str(tmp_path / "store"), pipeline_root=str(tmp_path / "kfp"), model="churn",
                             cv_folds=2, warm_tasks=False, local_search_packing=False,
                             families="logistic,xgboost,lightgbm")  # the families setting reaches the run
    data = tmp_path / "data.csv"
    churn(1500, seed=11).to_csv(data, index=False)
    result = run_training(DatasetSpec(str(data), "churned", timestamp="event_time"), settings)
    assert result["version"] == "v1" and result["promoted"]
    assert "task server" not in Path(result["log"]).read_text()  # every task a new interpreter
    from components import status as steps

    ran = steps.read_all(open_store(settings.store, settings), "churn", result["run"])
    assert len([name for name in ran if name.startswith("train-")]) == 3  # one search task per chosen family
