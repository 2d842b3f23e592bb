"""Immutable image references (defect 7) and the pipeline package the monitor builds itself (defect 3).

KFP caches a step by image string, command and inputs: an image tag that is rebuilt in
place lets a cached step answer for code it never ran. Given a checkout, the image tag is
derived from the lock file and the sources; `flywheel compile` and `make images` use it.
Given no package file, the cluster trigger compiles the pipeline from the installed code.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from components.data import DatasetSpec
from components.settings import ConfigError, Settings
from pipelines import cluster, image_tag
from pipelines.cli import app
from pipelines.triggers import KFPTrigger, make_trigger
from services.monitoring.trigger import RetrainRequest, TriggerError
from tests.integration.kfp_api.fake_kfp import FakeKFP

REPO = Path(__file__).resolve().parents[2]
REQUEST = RetrainRequest("test", "20260310T110000Z", "v1", {"start": "2026-03-10T11:00:00+00:00",
                         "end": "2026-03-10T12:00:00+00:00", "key": "w"}, "drift", "test-retrain-20260310t110000z")
SPEC = DatasetSpec(source="datasets/test/data.parquet", target="y", name="test")
PINNED = "registry.example/flywheel-components@sha256:" + "ab" * 32


def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for name in image_tag.SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            root.mkdir(exist_ok=True)
            shutil.copy(src, root / name)
    return root


def test_the_tag_is_the_version_and_a_hash_that_moves_with_the_lock_and_every_source(tmp_path: Path):
    root = checkout(tmp_path)
    tag = image_tag.source_tag(root)
    assert tag.startswith("0.1.0-") and len(tag.split("-")[1]) == 12
    assert image_tag.source_tag(root) == tag
    (root / "components" / "__pycache__").mkdir(exist_ok=True)
    (root / "components" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    assert image_tag.source_tag(root) == tag, "bytecode is not part of the image's sources"
    seen = {tag}
    for changed in ("uv.lock", "components/train.py", "services/serving/Dockerfile", "pipelines/training.py"):
        path = root / changed
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        seen.add(image_tag.source_tag(root))
        path.write_bytes(original)
    assert len(seen) == 5
    assert image_tag.source_tag(root) == tag


def test_the_script_and_the_module_agree_on_the_tag():
    out = subprocess.run(["python3", "pipelines/image_tag.py"], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == image_tag.source_tag(REPO)


def test_compile_defaults_to_the_source_tagged_component_image(tmp_path: Path, settings: Settings):
    out = tmp_path / "p.yaml"
    result = CliRunner().invoke(app, ["compile", "--output", str(out)], env={"FLYWHEEL_COMPONENT_IMAGE": ""})
    assert result.exit_code == 0, result.output
    ir = next(yaml.safe_load_all(out.read_text()))
    images = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
    assert images == {f"ghcr.io/flywheel/flywheel-components:{image_tag.source_tag(REPO)}"}
    assert not any(i.endswith(":0.1.0") for i in images)


def test_the_component_image_setting_wins_and_is_required_outside_a_checkout(settings: Settings, monkeypatch):
    assert cluster.component_image(settings.model_copy(update={"component_image": PINNED})) == PINNED
    monkeypatch.setattr(image_tag, "checkout_root", lambda: None)
    with pytest.raises(ConfigError, match="FLYWHEEL_COMPONENT_IMAGE"):
        cluster.component_image(settings)


@pytest.fixture
def kfp_api():
    with FakeKFP() as api:
        yield api


def test_without_a_package_the_trigger_uploads_the_pipeline_compiled_from_the_installed_code(settings: Settings, kfp_api):
    s3 = settings.model_copy(update={"runner": "kfp", "kfp_host": kfp_api.url, "store": "s3://bucket/flywheel",
                                     "s3_endpoint_url": "http://minio.flywheel.svc:9000", "component_image": PINNED})
    trigger = make_trigger(s3, SPEC)
    assert isinstance(trigger, KFPTrigger) and trigger.package_path is None
    out = trigger.start(REQUEST)
    assert out["status"] == "running" and out["run_id"] in kfp_api.runs
    package = kfp_api.packages[out["pipeline_version_id"]]
    ir, platform = list(yaml.safe_load_all(package))
    assert ir["pipelineInfo"]["name"] == "flywheel-training"
    assert {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()} == {PINNED}
    assert ir["defaultPipelineRoot"] == "s3://bucket/flywheel/pipeline_root"
    assert "flywheel-s3" in yaml.safe_dump(platform)  # the credentials Secret
    assert "http://minio.flywheel.svc:9000" in package.decode()
    # The same code compiles to the same package: a second retrain uploads nothing new.
    uploaded = len(kfp_api.packages)
    assert trigger.start(REQUEST)["pipeline_version_id"] == out["pipeline_version_id"]
    assert len(kfp_api.packages) == uploaded


def test_without_a_component_image_the_trigger_fails_in_one_sentence(settings: Settings, kfp_api, monkeypatch):
    monkeypatch.setattr(image_tag, "checkout_root", lambda: None)
    trigger = make_trigger(settings.model_copy(update={"runner": "kfp", "kfp_host": kfp_api.url}), SPEC)
    with pytest.raises(TriggerError, match="FLYWHEEL_COMPONENT_IMAGE"):
        trigger.start(REQUEST)
    assert not kfp_api.packages
