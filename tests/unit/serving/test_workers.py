"""The service's worker count follows the container's CPU limit (cgroup cpu.max) or the setting."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.settings import load_settings
from services.serving import launch


def _available() -> float:
    return float(len(os.sched_getaffinity(0)))


@pytest.fixture()
def cgroup(tmp_path: Path):
    def write(text: str | None) -> Path:
        if text is not None:
            (tmp_path / "cpu.max").write_text(text)
        return tmp_path
    return write


def test_cpu_limit_reads_the_cgroup_quota(cgroup) -> None:
    root = cgroup("50000 100000\n")  # a Kubernetes limit of 500m
    assert launch.cpu_limit(root) == 0.5


def test_cpu_limit_without_quota_is_the_cpus_available(cgroup) -> None:
    assert launch.cpu_limit(cgroup("max 100000\n")) == _available()
    assert launch.cpu_limit(cgroup(None)) == _available()  # no file: cgroup v1 or not Linux


def test_cpu_limit_never_exceeds_the_cpus_available(cgroup) -> None:
    assert launch.cpu_limit(cgroup(f"{int(_available() * 4 * 100000)} 100000")) == _available()


def test_workers_follow_the_limit_rounded_up(cgroup) -> None:
    settings = load_settings(store="unused")
    assert launch.service_workers(settings, cgroup("50000 100000")) == 1
    assert launch.service_workers(settings, cgroup("100000 100000")) == 1
    # 1.5 CPUs round up to 2 workers, unless fewer CPUs are there at all
    assert launch.service_workers(settings, cgroup("150000 100000")) == min(2, math.ceil(_available()))


def test_the_setting_overrides_the_limit(cgroup) -> None:
    settings = load_settings(store="unused", serving_workers=3)
    assert launch.service_workers(settings, cgroup("50000 100000")) == 3


def test_serve_command_passes_workers_and_one_model_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", "api_server.metrics.enabled=true")
    settings = load_settings(store=str(tmp_path), serving_workers=2, spill_dir=str(tmp_path / "spill"))
    _, env = launch.serve_command(settings, 3000)
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["BENTOML_CONFIG_OPTIONS"].startswith("api_server.metrics.enabled=true ")  # the user's options kept
    # BentoML itself must accept the option and apply it to this service (an unquoted
    # service name with a dash was refused at start-up)
    code = ("import json; from _bentoml_sdk.service.factory import Service; "
            "from bentoml._internal.configuration import load_config; "
            "from bentoml._internal.configuration.containers import BentoMLContainer; "
            "load_config(override_defaults={'services': {'flywheel-serving': {'workers': 1, 'threads': 4}}}, use_version=2); "
            "print(json.dumps(BentoMLContainer.config.services['flywheel-serving'].get()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    config = json.loads(out.stdout.strip().splitlines()[-1])
    assert config["workers"] == 2
    assert config["threads"] == 4


def test_settings_refuse_zero_workers() -> None:
    with pytest.raises(ValueError, match="serving_workers"):
        load_settings(store="unused", serving_workers=0)


def test_workers_keep_a_heap_pad_for_large_bodies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``flywheel serve`` and the Bento's container give glibc the same heap pad; a user's value wins."""
    import yaml

    monkeypatch.delenv("MALLOC_TOP_PAD_", raising=False)
    settings = load_settings(store=str(tmp_path), spill_dir=str(tmp_path / "spill"))
    _, env = launch.serve_command(settings, 3000)
    assert env["MALLOC_TOP_PAD_"] == str(launch.MALLOC_TOP_PAD) == str(32 << 20)
    bento_env = {e["name"]: e["value"] for e in yaml.safe_load((launch.PROJECT_ROOT / "bentofile.yaml").read_text())["envs"]}
    assert bento_env["MALLOC_TOP_PAD_"] == env["MALLOC_TOP_PAD_"]
    monkeypatch.setenv("MALLOC_TOP_PAD_", "1048576")
    assert launch.serve_command(settings, 3000)[1]["MALLOC_TOP_PAD_"] == "1048576"
