"""The cluster tiers on a machine that cannot run them: one sentence, and a failure under CI.

Given a machine missing one of the container tier's tools (a PATH without it, the tier's real
scripts and the real podman), when the tier's check runs, then it names exactly what is
missing and the command that installs it, and `make container-test` skips with that sentence,
while under ``FLYWHEEL_REQUIRE_TIERS=1`` (what .ci/run sets) it fails with it. The same holds for
the API server tier without its built binaries.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_support import REPO

TOOLS = REPO / "k8s" / "container-tools.sh"
REQUIRE = {"FLYWHEEL_REQUIRE_TIERS": "1"}


def path_without(tmp_path: Path, *names: str) -> str:
    """A PATH with every command of this one except ``names`` (symlinks to the real ones)."""
    out = tmp_path / "bin"
    out.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = out / entry.name
            if entry.name not in names and not link.exists() and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    return str(out)


def conf(tmp_path: Path, engine: str) -> Path:
    """A containers.conf with the tier's limits and the given [engine] table."""
    path = tmp_path / "containers.conf"
    path.write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=8192:8192"]\n\n[engine]\n' + engine)
    return path


def preflight(path: str, containers_conf: Path) -> subprocess.CompletedProcess[str]:
    script = f". {TOOLS} && container_preflight container-test {containers_conf}"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False,
                          env={**os.environ, "PATH": path})


def test_preflight_names_catatonit_when_podman_would_not_find_it(tmp_path):
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    config = conf(tmp_path, f'runtime = "runc"\nhelper_binaries_dir = ["{helpers}"]\n')
    proc = preflight(path_without(tmp_path, "catatonit"), config)
    assert proc.returncode == 1, proc
    (sentence,) = proc.stdout.splitlines()  # one sentence
    assert sentence.startswith("container-test cannot run here: ") and sentence.endswith(".")
    missing, install = re.search(r"cannot run here: (?:.*; )?([^;]*) (?:is|are) missing \(as root: ([^)]*)\)", sentence).groups()
    assert "catatonit" in re.split(r", | and ", missing)
    assert install.startswith("apt-get install --no-install-recommends ") and " catatonit" in install and " runc" in install


def test_preflight_finds_catatonit_where_podman_looks_for_it(tmp_path):
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    (helpers / "catatonit").symlink_to(shutil.which("true"))
    config = conf(tmp_path, f'runtime = "runc"\nhelper_binaries_dir = ["{helpers}"]\n')
    proc = preflight(path_without(tmp_path, "catatonit"), config)
    assert proc.returncode in (0, 1) and not proc.stderr, proc  # ran: passed, or named something else
    assert not re.search(r"cannot run here: .*\bcatatonit\b.* missing \(", proc.stdout), proc.stdout


needs_podman = pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("podman") and shutil.which("runc")),
                                  reason="needs root, podman and runc (make container-test installs them)")


@needs_podman
def test_preflight_refuses_a_conf_that_does_not_pin_runc(tmp_path):
    # crun: what Debian's podman picks when it is installed, and refuses a hybrid cgroup layout.
    config = conf(tmp_path, 'runtime = "crun"\n')
    proc = preflight(os.environ["PATH"], config)
    assert proc.returncode == 1, proc
    (sentence,) = proc.stdout.splitlines()
    assert "crun" in sentence and str(config) in sentence


@needs_podman
def test_the_tier_s_own_conf_makes_podman_run_runc():
    proc = subprocess.run(["bash", "-c", f". {TOOLS} && container_preflight container-test"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode in (0, 1) and not proc.stderr, proc
    assert "podman would run" not in proc.stdout and "podman fails" not in proc.stdout, proc.stdout


def run_sh(path: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "tests" / "containers" / "run.sh")], capture_output=True, text=True,
                          check=False, timeout=120, env={**os.environ, "PATH": path, "PY": sys.executable, **env})


def test_make_container_test_skips_naming_what_is_missing_and_fails_under_ci(tmp_path):
    # No apt-get: nothing can be installed, so mmdebstrap stays missing.
    path = path_without(tmp_path, "mmdebstrap", "apt-get")
    skipped = run_sh(path, FLYWHEEL_REQUIRE_TIERS="")
    assert skipped.returncode == 0, skipped
    assert re.match(r"SKIPPED: container-test cannot run here: .*\bmmdebstrap\b.* missing \(as root: apt-get install ",
                    skipped.stdout), skipped
    failed = run_sh(path, **REQUIRE)
    assert failed.returncode == 1, failed
    assert re.match(r"FAILED \(FLYWHEEL_REQUIRE_TIERS=1\): container-test cannot run here: .*\bmmdebstrap\b", failed.stderr)
    assert "pytest" not in failed.stdout + failed.stderr  # nothing started


def test_the_api_server_tier_fails_under_ci_without_its_binaries(tmp_path):
    env = {**os.environ, "K8S120": str(tmp_path / "none")}
    cmd = [sys.executable, "-m", "pytest", "tests/apiserver", "-o", "addopts=", "-p", "no:randomly", "-p", "no:xdist",
           "-q", "-p", "no:cacheprovider", "-x"]
    skipped = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, env={**env, "FLYWHEEL_REQUIRE_TIERS": ""})
    assert skipped.returncode == 0 and " skipped" in skipped.stdout and " failed" not in skipped.stdout, skipped.stdout[-2000:]
    failed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, env={**env, **REQUIRE})
    assert failed.returncode == 1, failed.stdout[-2000:]
    assert "the real API server tier cannot run here: " in failed.stdout and "not built (run `make apiserver`" in failed.stdout


def test_the_api_server_build_fails_under_ci_when_it_cannot_build(tmp_path):
    env = {**os.environ, "K8S120": str(tmp_path / "k8s"), "PATH": path_without(tmp_path, "make")}
    script = str(REPO / "tests" / "apiserver" / "build.sh")
    skipped = subprocess.run(["bash", script], capture_output=True, text=True, check=False, env={**env, "FLYWHEEL_REQUIRE_TIERS": ""})
    assert (skipped.returncode, skipped.stdout) == (0, "SKIPPED: the real API server tier cannot be built here: make is missing.\n")
    failed = subprocess.run(["bash", script], capture_output=True, text=True, check=False, env={**env, **REQUIRE})
    assert failed.returncode == 1 and "cannot be built here: make is missing." in failed.stderr, failed
