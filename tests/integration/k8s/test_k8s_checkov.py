"""checkov over everything we ship: the rendered chart (default and production values), the
kustomize builds and the three Dockerfiles. Zero failed checks; every skip carries a reason
next to the resource it is about (checkov.io/skipN annotation or `# checkov:skip=` comment)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from k8s_support import BIN, REPO

DOCKERFILES = ("components/Dockerfile", "services/serving/Dockerfile", "services/monitoring/Dockerfile")


@pytest.fixture(scope="module")
def checkov(builds, tmp_path_factory) -> dict[str, dict]:
    """One checkov run (kubernetes + dockerfile frameworks only; it is slow) -> results per framework."""
    root = tmp_path_factory.mktemp("checkov")
    for name, docs in builds.items():
        (root / "manifests").mkdir(exist_ok=True)
        (root / "manifests" / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    for rel in DOCKERFILES:
        dest = root / "docker" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, dest)
    proc = subprocess.run(
        [str(BIN / "checkov"), "-d", str(root), "--framework", "kubernetes", "dockerfile",
         "--skip-download", "--compact", "-o", "json"],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert proc.stdout.strip(), f"checkov printed nothing:\n{proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    return {r["check_type"]: r for r in reports}


@pytest.mark.parametrize("framework", ["kubernetes", "dockerfile"])
def test_checkov_has_no_failed_checks(checkov, framework):
    assert framework in checkov, f"checkov produced no {framework} results: {list(checkov)}"
    results = checkov[framework]["results"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in results["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert len(results["passed_checks"]) > 50


@pytest.mark.parametrize("framework", ["kubernetes", "dockerfile"])
def test_every_checkov_skip_is_explained(checkov, framework):
    skipped = checkov[framework]["results"]["skipped_checks"]
    assert skipped, "expected the annotated skips (image digests, AWS_* env) to be reported"
    reasons = {f"{c['check_id']} {c['resource']}": (c["check_result"].get("suppress_comment") or "").strip() for c in skipped}
    unexplained = [ref for ref, why in reasons.items() if len(why) < 20 or why == "No comment provided"]
    assert not unexplained, unexplained


def test_checkov_saw_every_dockerfile_and_build(checkov, builds):
    docker_files = {Path(c["file_path"]).as_posix() for c in checkov["dockerfile"]["results"]["passed_checks"]}
    for rel in DOCKERFILES:
        assert any(f.endswith(f"docker/{rel}") for f in docker_files), f"checkov did not scan {rel}"
    k8s_files = {Path(c["file_path"]).name for c in checkov["kubernetes"]["results"]["passed_checks"]}
    assert {f"{name}.yaml" for name in builds} <= k8s_files
