"""The kind end-to-end workflow cannot run here; check it is wired to what we ship."""

from __future__ import annotations

import helm_python as helm
import yaml
from k8s_support import CHART, NAMESPACE, REPO, find, helm_render, kustomize, manifests

from pipelines import kfp_client

WORKFLOW = REPO / ".github" / "workflows" / "e2e-kind.yml"


def _steps() -> tuple[dict, str]:
    wf = yaml.safe_load(WORKFLOW.read_text())
    steps = wf["jobs"]["e2e"]["steps"]
    return wf, "\n".join(s.get("run", "") for s in steps)


def test_workflow_installs_pinned_kfp_minio_and_the_chart():
    wf, script = _steps()
    major, minor, *_ = (int(x) for x in wf["env"]["KFP_VERSION"].split("."))
    assert (major, minor) >= kfp_client.RECOMMENDED_KFP, "the workflow pins KFP 2.17 or later"
    assert "manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}" in script
    # Built with the project's script, tagged with the immutable source-derived tag, installed with it.
    assert "BUILDER=docker BASE_IMAGE=python:3.11-slim-bookworm" in script and "bash k8s/images.sh" in script
    assert 'IMAGE_TAG="$(python3 pipelines/image_tag.py)"' in script and "IMAGE_TAG" not in wf["env"]
    assert "kind load docker-image" in script and '--set image.tag="${IMAGE_TAG}"' in script
    assert "kubectl apply -k k8s/overlays/kind/minio" in script
    assert "helm install flywheel helm/flywheel" in script and "-f helm/flywheel/values-kind.yaml" in script
    assert "flywheel submit --host http://localhost:8888 --data s3://flywheel/datasets/demo/ --target label --wait" in script
    assert "curl -sf -X POST localhost:3000/predict" in script
    assert "create job --from=cronjob/flywheel-monitor" in script


def test_workflow_uses_the_kind_overlay_dev_credentials():
    wf, _ = _steps()
    generator = yaml.safe_load((REPO / "k8s/overlays/kind/minio/kustomization.yaml").read_text())["secretGenerator"][0]
    literals = dict(item.split("=", 1) for item in generator["literals"])
    assert literals == {k: wf["env"][k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    assert "dev" in literals["AWS_SECRET_ACCESS_KEY"]  # obviously not a real credential


def test_workflow_runs_the_container_checks_and_the_cluster_path_checks():
    _, script = _steps()
    assert "make container-test" in script
    assert "kubectl -n kubeflow get configmap flywheel-config" in script
    assert "auth can-i patch deployment/flywheel-serving -n flywheel --as=system:serviceaccount:kubeflow:pipeline-runner" in script
    assert "Prefix='store/pipeline_root/'" in script


def test_kind_values_lint_and_match_the_kind_overlay():
    values = yaml.safe_load((CHART / "values-kind.yaml").read_text())
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [] and report["messages"] == [], report
    chart = manifests(helm_render(values))
    overlay = kustomize(REPO / "k8s" / "overlays" / "kind")
    for docs in (chart, overlay):
        c = find(docs, "Deployment", "flywheel-serving")["spec"]["template"]["spec"]["containers"][0]
        assert c["imagePullPolicy"] == "IfNotPresent" and c["resources"]["requests"] == {"cpu": "100m", "memory": "384Mi"}
        hpa = find(docs, "HorizontalPodAutoscaler", "flywheel-serving")["spec"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 2)
