"""What the KFP backend needs from a client beyond the REST shapes: its version, the pipeline
root on every run, and multi-user namespaces and tokens (defects 2, 4 and 5 of issue 13).

The loopback FakeKFP answers healthz as the backend's HTTP proxy does (commit_sha, tag_name,
multi_user, pipeline_store); everything else is kfp.Client talking to it unmodified.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.data import DatasetSpec
from components.settings import load_settings
from pipelines import kfp_client
from pipelines.cluster import schedule, submit
from pipelines.kfp_client import KFPError
from pipelines.triggers import KFPTrigger
from services.monitoring.trigger import RetrainRequest, TriggerError
from tests.integration.kfp_api.fake_kfp import FakeKFP

SPEC = DatasetSpec("s3://flywheel/datasets/demo/", "churned", name="demo")
REQUEST = RetrainRequest("demo", "20260310T110000Z", "v1", {"start": "2026-03-10T11:00:00+00:00",
                         "end": "2026-03-10T12:00:00+00:00", "key": "w"}, "drift", "demo-retrain-20260310t110000z")
PACKAGE = b"# PIPELINE DEFINITION\npipelineInfo:\n  name: flywheel-training\n"


def settings_for(api: FakeKFP, **extra):
    return load_settings(store="s3://flywheel/store", kfp_host=api.url, model="demo", runner="kfp", **extra)


@pytest.fixture
def package(tmp_path: Path) -> Path:
    p = tmp_path / "flywheel-training.yaml"
    p.write_bytes(PACKAGE)
    return p


def posts(api: FakeKFP) -> list[str]:
    return [c.path for c in api.requests if c.method == "POST"]


# --- defect 2: the backend's version ---------------------------------------------------------

@pytest.mark.parametrize("tag", ["2.5.0", "v2.13.1", "1.8.22", "2.0.0-rc.1"])
def test_submit_refuses_a_backend_older_than_2_14_before_uploading(tag: str) -> None:
    with FakeKFP(tag_name=tag) as api:
        with pytest.raises(KFPError) as exc:
            submit(settings_for(api), SPEC, run_name="r")
        assert [c.path for c in api.requests] == ["/apis/v2beta1/healthz"]
    message = str(exc.value)
    assert f"is version {tag}" in message and "2.14 or later is required (2.17 or later recommended)" in message
    assert message.count(". ") == 0, "one sentence"


@pytest.mark.parametrize("tag", ["2.14.0", "2.17.0", "v2.17.1", "3.0.0", "unknown"])
def test_submit_accepts_2_14_and_later_and_dev_builds(tag: str) -> None:
    with FakeKFP(tag_name=tag) as api:
        out = submit(settings_for(api), SPEC, run_name="r")
        assert out["run_id"] in api.runs


def test_the_trigger_refuses_an_old_backend_too(package: Path) -> None:
    with FakeKFP(tag_name="2.5.0") as api:
        with pytest.raises(TriggerError, match="version 2.5.0"):
            KFPTrigger(settings_for(api), SPEC, package, token_path=None).start(REQUEST)
        assert posts(api) == []


def test_cli_submit_says_so_in_one_line() -> None:
    with FakeKFP(tag_name="2.5.0") as api:
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "submit", "--data", SPEC.source, "--target",
                               "churned", "--host", api.url], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "FLYWHEEL_STORE": "s3://flywheel/store", "COLUMNS": "400"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "version 2.5.0" in line and "2.14 or later" in line


def test_backend_version_parsing() -> None:
    assert kfp_client.backend_version("2.17.0") == (2, 17, 0)
    assert kfp_client.backend_version("v2.5.0-rc.1") == (2, 5, 0)
    assert kfp_client.backend_version("unknown") is None and kfp_client.backend_version(None) is None


# --- defect 4: the pipeline root on every run --------------------------------------------------

def test_submit_and_schedule_name_the_pipeline_root_on_the_run() -> None:
    with FakeKFP() as api:
        submit(settings_for(api), SPEC, run_name="r")
        schedule(settings_for(api), SPEC, "nightly", "0 3 * * *")
        run = api.calls("POST", "/apis/v2beta1/runs")[0].json
        recurring = api.calls("POST", "/apis/v2beta1/recurringruns")[0].json
    assert run["runtime_config"]["pipeline_root"] == "s3://flywheel/store/pipeline_root"
    assert recurring["runtime_config"]["pipeline_root"] == "s3://flywheel/store/pipeline_root"


def test_the_trigger_names_the_pipeline_root_on_the_run(package: Path) -> None:
    with FakeKFP() as api:
        KFPTrigger(settings_for(api), SPEC, package, token_path=None).start(REQUEST)
        run = api.calls("POST", "/apis/v2beta1/runs")[0].json
    assert run["runtime_config"]["pipeline_root"] == "s3://flywheel/store/pipeline_root"


def test_an_explicit_pipeline_root_uri_wins(package: Path) -> None:
    with FakeKFP() as api:
        s = settings_for(api, pipeline_root="s3://artifacts/flywheel")
        KFPTrigger(s, SPEC, package, token_path=None).start(REQUEST)
        assert api.calls("POST", "/apis/v2beta1/runs")[0].json["runtime_config"]["pipeline_root"] == "s3://artifacts/flywheel"


# --- defect 5: multi-user KFP --------------------------------------------------------------------

def test_multi_user_backend_without_a_namespace_is_refused(package: Path) -> None:
    with FakeKFP(multi_user=True) as api:
        with pytest.raises(TriggerError, match="multi-user mode: set FLYWHEEL_KFP_NAMESPACE"):
            KFPTrigger(settings_for(api), SPEC, package, token_path=None).start(REQUEST)
        assert posts(api) == []


def test_multi_user_runs_live_in_the_profile_namespace_with_the_projected_token(package: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("projected-token-audience-pipelines\n")
    with FakeKFP(multi_user=True) as api:
        s = settings_for(api, kfp_namespace="team-a", kfp_token_path=str(token))
        KFPTrigger(s, SPEC, package).start(REQUEST)  # the token path comes from the settings
        exp = api.calls("POST", "/apis/v2beta1/experiments")[0].json
        upload = api.calls("POST", "/apis/v2beta1/pipelines/upload")[0]
        lookups = api.calls("GET", "/apis/v2beta1/pipelines")
        assert all(c.headers.get("authorization") == "Bearer projected-token-audience-pipelines" for c in api.requests)
    assert exp["namespace"] == "team-a"
    assert upload.query.get("namespace") == "team-a", "a namespaced pipeline: the profile's RBAC allows it"
    assert lookups and all(c.query.get("namespace") == "team-a" for c in lookups)


def test_without_a_token_file_no_token_is_sent(package: Path, tmp_path: Path) -> None:
    with FakeKFP() as api:
        s = settings_for(api, kfp_token_path=str(tmp_path / "absent"))
        KFPTrigger(s, SPEC, package).start(REQUEST)
        assert not any("authorization" in c.headers for c in api.requests)
