"""The batch-scoring pipeline gets the training pipeline's cluster settings (issue 13, defect 4)."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from pipelines.batch import compile_batch
from pipelines.compile import compile_pipeline
from pipelines.training import ClusterOptions

CLUSTER = ClusterOptions(s3_endpoint_url="http://minio.flywheel.svc:9000", node_selector={"pool": "batch"},
                         tolerations=({"key": "batch", "operator": "Exists", "value": None, "effect": "NoSchedule"},))


def _load(path):
    ir, *platform = list(yaml.safe_load_all(open(path)))
    return ir, (platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {})


def test_batch_task_has_the_same_cluster_settings_as_a_training_task(tmp_path):
    batch_ir, batch_k8s = _load(compile_batch(str(tmp_path / "batch.yaml"), "registry.example/flywheel:7", CLUSTER,
                                              "s3://flywheel/store/pipeline_root"))
    train_ir, train_k8s = _load(compile_pipeline(tmp_path / "train.yaml", "registry.example/flywheel:7", CLUSTER,
                                                 "s3://flywheel/store/pipeline_root"))
    assert batch_k8s["exec-batch-predict"] == train_k8s["exec-ingest"]
    for key in ("secretAsEnv", "configMapAsEnv", "nodeSelector", "tolerations", "securityContext"):
        assert batch_k8s["exec-batch-predict"].get(key), key
    batch_c = batch_ir["deploymentSpec"]["executors"]["exec-batch-predict"]["container"]
    train_c = train_ir["deploymentSpec"]["executors"]["exec-ingest"]["container"]
    assert batch_c["image"] == "registry.example/flywheel:7"
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://minio.flywheel.svc:9000"} in batch_c["env"]
    assert batch_c["env"] == train_c["env"]
    assert batch_ir["defaultPipelineRoot"] == train_ir["defaultPipelineRoot"] == "s3://flywheel/store/pipeline_root"


def test_cli_compile_batch_takes_the_cluster_options(tmp_path):
    out = tmp_path / "batch.yaml"
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "compile-batch", "--output", str(out), "--image",
                           "registry.example/flywheel:7", "--node-selector", "pool=batch", "--s3-endpoint",
                           "http://minio:9000"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FLYWHEEL_STORE": "s3://flywheel/store"})
    assert proc.returncode == 0, proc.stderr
    ir, k8s = _load(out)
    assert ir["defaultPipelineRoot"] == "s3://flywheel/store/pipeline_root"
    assert k8s["exec-batch-predict"]["nodeSelector"] == {"labels": {"pool": "batch"}}
    assert k8s["exec-batch-predict"]["secretAsEnv"][0]["secretName"] == "flywheel-s3"
