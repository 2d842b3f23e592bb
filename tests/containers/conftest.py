"""The container tier (`make container-test`): the project's images, run as the chart renders them.

Everything runs inside a network namespace this session creates: podman's bridge, the
containers' addresses and every request of the test live there, so nothing appears on the
machine's own network. The test process itself enters the namespace (setns) for the
session and leaves it at the end.

The tier runs only when asked for by path (``pytest tests/containers``); the fast suite
(`make test`) reports its tests as skipped, with the command that runs them. Before the first
container starts, ``container_preflight`` (k8s/container-tools.sh, the check `make
container-test` runs too) names whatever this machine lacks: the tier then skips with that
sentence, or fails with it under ``FLYWHEEL_REQUIRE_TIERS=1`` (.ci/run).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.image_tag import source_tag
from tests.containers.pods import image_exists
from tests.tiers import unavailable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLONE_NEWNET = 0x40000000


def _asked_for(config: pytest.Config) -> bool:
    for arg in config.args:
        path = Path(arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _asked_for(config):
        return
    skip = pytest.mark.skip(reason="container tier: `make container-test` runs it")
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(skip)


def preflight() -> str | None:
    """None when the tier can start its containers here, else the sentence naming what is missing."""
    script = f". {REPO / 'k8s' / 'container-tools.sh'} && container_preflight 'the container tier'"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    return None if proc.returncode == 0 else (proc.stdout + proc.stderr).strip()


@pytest.fixture(scope="session")
def tag() -> str:
    """The images' tag: derived from the lock file and the sources, as `make images` tags them."""
    why = preflight()
    if why:
        unavailable(why)
    return source_tag(REPO)


@pytest.fixture(scope="session")
def images(tag: str) -> dict[str, str]:
    """The image references of this checkout; built with `k8s/images.sh --support` when absent."""
    refs = {name: f"ghcr.io/flywheel/flywheel-{name}:{tag}" for name in ("components", "serving", "monitor")}
    refs["support"] = f"localhost/flywheel-test-support:{tag}"
    if not all(image_exists(ref) for ref in refs.values()):
        proc = subprocess.run(["bash", str(REPO / "k8s" / "images.sh"), "--support"], cwd=REPO, capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0, f"k8s/images.sh --support failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    missing = [ref for ref in refs.values() if not image_exists(ref)]
    assert not missing, f"images not built: {missing} (did the sources change during the build?)"
    return refs


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@pytest.fixture(scope="session")
def netns(tag: str) -> Iterator[str]:
    """A fresh network namespace with loopback up, entered by this process for the session."""
    name = f"flywheel-ct-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        yield name
    finally:
        _setns(home)
        os.close(target)
        os.close(home)
        subprocess.run(["ip", "netns", "del", name], check=False)
