"""Shared fixtures: settings on a temporary store, a real S3-protocol server (moto) on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from components.settings import Settings, load_settings
from services.serving.launch import free_port

ROOT = Path(__file__).resolve().parent.parent
# End-to-end modules (real pipelines on kfp.local, real servers, the whole loop, a Bento build):
# marked slow, kept in `make test`, and scheduled first so parallel workers finish together.
SLOW_MODULES = {
    "tests/test_pipeline.py", "tests/test_loop.py", "tests/test_batch_pipeline.py", "tests/test_real_data.py",
    "tests/monitoring/test_local_trigger.py", "tests/serving/test_lifecycle.py", "tests/serving/test_http.py",
    "tests/serving/test_faults.py", "tests/serving/test_packaging.py", "tests/apiserver/test_deploy_apiserver.py",
    "tests/test_bench_matched.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the end-to-end modules slow and run the slow tests first (stable: modules stay together)."""
    for item in items:
        if item.path.relative_to(ROOT).as_posix() in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a fresh local store and pipeline root."""
    return load_settings(store=str(tmp_path / "store"), pipeline_root=str(tmp_path / "root"), model="test",
                         spill_dir=str(tmp_path / "spill"), evidently_workspace=str(tmp_path / "evidently"))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's ThreadedMotoServer: a real S3-protocol HTTP server on loopback."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_settings(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings on a fresh bucket of the loopback S3 server."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"fw-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return load_settings(store=f"s3://{bucket}/flywheel", pipeline_root=str(tmp_path / "root"), model="test",
                         s3_max_attempts=2)
