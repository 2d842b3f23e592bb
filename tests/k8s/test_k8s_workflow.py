"""The kind end-to-end workflow cannot run here; check it is wired to what we ship."""

from __future__ import annotations

import yaml
from k8s_support import REPO

WORKFLOW = REPO / ".github" / "workflows" / "e2e-kind.yml"


def _steps() -> tuple[dict, str]:
    wf = yaml.safe_load(WORKFLOW.read_text())
    steps = wf["jobs"]["e2e"]["steps"]
    return wf, "\n".join(s.get("run", "") for s in steps)


def test_workflow_installs_pinned_kfp_minio_and_the_chart():
    wf, script = _steps()
    assert wf["env"]["KFP_VERSION"] == "2.5.0"
    assert "manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}" in script
    # Built with the project's script, tagged with the immutable source-derived tag, installed with it.
    assert "BUILDER=docker BASE_IMAGE=python:3.11-slim-bookworm" in script and "bash k8s/images.sh" in script
    assert 'IMAGE_TAG="$(python3 pipelines/image_tag.py)"' in script and "IMAGE_TAG" not in wf["env"]
    assert "kind load docker-image" in script and '--set image.tag="${IMAGE_TAG}"' in script
    assert "kubectl apply -k k8s/overlays/kind/minio" in script
    assert "helm install flywheel helm/flywheel" in script
    assert "flywheel submit --host http://localhost:8888 --data s3://flywheel/datasets/demo/ --target label --wait" in script
    assert "curl -sf -X POST localhost:3000/predict" in script
    assert "create job --from=cronjob/flywheel-monitor" in script


def test_workflow_uses_the_kind_overlay_dev_credentials():
    wf, _ = _steps()
    generator = yaml.safe_load((REPO / "k8s/overlays/kind/minio/kustomization.yaml").read_text())["secretGenerator"][0]
    literals = dict(item.split("=", 1) for item in generator["literals"])
    assert literals == {k: wf["env"][k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    assert "dev" in literals["AWS_SECRET_ACCESS_KEY"]  # obviously not a real credential
