"""The test tiers by folder, and the shared fixtures: settings on a temporary store, a real S3-protocol
server (moto) on loopback, model versions and real servers, monitoring settings."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from components.net import free_port
from components.registry import Registry
from components.settings import Settings, load_settings
from components.store import LocalStore, open_store
from testkit.server import Server, serving_settings

if TYPE_CHECKING:
    from testkit.logs import Served

ROOT = Path(__file__).resolve().parent.parent
# The tier of a test is its folder, nothing else: a file outside these is a collection error, so a
# move cannot silently take a test out of its tier. unit: functions and small objects in process,
# no servers, seconds. integration: real parts on loopback (S3 protocol server, HTTP servers,
# kfp.local steps, Helm, the CLI). e2e: whole pipelines, the loop, servers under traffic and
# faults, the Bento build; the cluster tiers of `make container-test` (apiserver, containers)
# count as e2e. The e2e tests are marked slow and scheduled first, so parallel workers finish together.
TIERS = {"tests/unit": "unit", "tests/integration": "integration", "tests/e2e": "e2e",
         "tests/apiserver": "e2e", "tests/containers": "e2e"}
# The benchmarks' own tests (benchmarks/tests) check the benchmark harness; each module says its tier.
OWN_TIERS = ("benchmarks/tests",)


def tier_of(path: Path) -> str | None:
    """The tier of a test file by its folder (None for a folder whose modules mark themselves)."""
    rel = path.resolve().relative_to(ROOT).as_posix() if path.resolve().is_relative_to(ROOT) else None
    if rel is None:  # a test outside this checkout (pytest given another path): no tier of ours
        return None
    for folder, tier in TIERS.items():
        if rel.startswith(folder + "/"):
            return tier
    if rel.startswith(tuple(f + "/" for f in OWN_TIERS)):
        return None
    raise pytest.UsageError(f"{rel} is in no test tier folder: move it under tests/unit, tests/integration or tests/e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its folder's tier (e2e also slow) and run the slow tests first (stable: modules stay together)."""
    for item in items:
        tier = tier_of(item.path)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
        if tier == "e2e":
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


# --- serving: model versions in a store, and real servers (testkit/server.py) ----------------------

@pytest.fixture(scope="session")
def serving_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store with a promoted classifier ('wine') and regressor ('diabetes')."""
    from testkit.models import LINEAR, LOGISTIC, add_version, diabetes_frame, wine_frame

    root = tmp_path_factory.mktemp("serving") / "store"
    store = LocalStore(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(Registry(store, "wine"), wine_frame(), "target", LOGISTIC)
        add_version(Registry(store, "diabetes"), diabetes_frame(), "target", LINEAR)
    return root


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """Start servers during a test; every one is stopped when the test ends."""
    servers: list[Server] = []

    def start(settings: Settings, version: str | None = None, **env: str) -> Server:
        server = Server(settings, tmp_path / f"server-{len(servers)}.log", version, env)
        servers.append(server)
        return server.start()

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory, serving_store: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server for the model named by the module's MODEL, shared by its tests."""
    tmp = tmp_path_factory.mktemp(f"srv-{request.module.MODEL}")
    server = Server(serving_settings(serving_store, request.module.MODEL, tmp), tmp / "server.log")
    try:
        yield server.start()
    finally:
        server.stop()


# --- monitoring ----------------------------------------------------------------------------------

@pytest.fixture
def mon_settings(settings: Settings) -> Settings:
    """Hourly windows, small minimums, no cooldown unless a test asks for one."""
    return settings.model_copy(update={"window_minutes": 60, "min_rows": 1000, "cooldown_minutes": 0,
                                       "sample_size": 20_000})


@pytest.fixture
def served(mon_settings: Settings) -> Served:
    """A champion served in the monitoring settings' store, with its reference rows (testkit/logs.py)."""
    from testkit.logs import serve_version

    return serve_version(open_store(mon_settings.store, mon_settings), mon_settings.model)
