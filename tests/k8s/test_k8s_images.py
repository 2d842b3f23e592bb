"""The image recipes and the script that prints how to build them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from k8s_support import REPO

SCRIPT = REPO / "k8s" / "images.sh"
DOCKERFILES = {
    "components/Dockerfile": "flywheel-components",
    "services/serving/Dockerfile": "flywheel-serving",
    "services/monitoring/Dockerfile": "flywheel-monitor",
}


def run_script(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("IMAGE_REGISTRY", "IMAGE_TAG")}
    proc = subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, check=True, cwd=REPO, env={**clean, **env})
    return proc.stdout.splitlines()


def test_images_script_prints_one_build_per_dockerfile_with_default_tags():
    lines = run_script()
    assert len(lines) == 3
    for (dockerfile, image), line in zip(DOCKERFILES.items(), lines):
        assert line.startswith("docker build ") and line.endswith(" .")
        assert f"-f {dockerfile} " in line
        assert f"-t ghcr.io/flywheel/{image}:0.1.0 " in line
        assert (REPO / dockerfile).is_file()
    # The monitor builds FROM the component image of the same tag, so it comes after it.
    assert "--build-arg BASE_IMAGE=ghcr.io/flywheel/flywheel-components:0.1.0" in lines[2]


def test_images_script_honours_registry_and_tag():
    lines = run_script(IMAGE_REGISTRY="registry.example.com/ml", IMAGE_TAG="2.0.1")
    assert all("registry.example.com/ml/flywheel-" in line and ":2.0.1" in line for line in lines)
    assert "ghcr.io" not in "\n".join(lines)


def test_component_image_default_matches_the_kfp_components():
    """KFP component wrappers name the image the script builds (components/kfp_components.py)."""
    source = (REPO / "components" / "kfp_components.py").read_text()
    declared = re.search(r'COMPONENT_IMAGE = "([^"]+)"', source).group(1)
    assert f"-t {declared} " in run_script()[0]


@pytest.mark.parametrize("dockerfile", ["components/Dockerfile", "services/serving/Dockerfile"])
def test_python_images_are_multi_stage_from_the_lock_file(dockerfile):
    text = (REPO / dockerfile).read_text()
    froms = re.findall(r"^FROM (\S+) AS (\w+)", text, flags=re.MULTILINE)
    assert [alias for _, alias in froms] == ["builder", "runtime"]
    assert all(image.startswith("python:3.11-slim") for image, _ in froms)
    assert "COPY pyproject.toml uv.lock ./" in text
    assert text.count("uv sync --frozen --no-dev") == 2
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    assert re.search(r"ghcr.io/astral-sh/uv:\d+\.\d+\.\d+ ", text), "uv image must be pinned"


@pytest.mark.parametrize("dockerfile", list(DOCKERFILES))
def test_images_run_as_numeric_non_root_without_credentials(dockerfile):
    text = (REPO / dockerfile).read_text()
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users and users[-1] == "10001:10001"
    assert "HEALTHCHECK" in text
    assert not re.search(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY)|PASSWORD|TOKEN", text)


def test_serving_image_serves_on_3000_with_a_healthcheck():
    text = (REPO / "services/serving/Dockerfile").read_text()
    assert 'ENTRYPOINT ["flywheel", "serve"]' in text and 'CMD ["--port", "3000"]' in text
    assert "EXPOSE 3000" in text
    assert re.search(r"HEALTHCHECK .*\n.*http://127\.0\.0\.1:3000/healthz", text)


def test_monitor_image_runs_the_monitor():
    text = (REPO / "services/monitoring/Dockerfile").read_text()
    assert 'ENTRYPOINT ["flywheel", "monitor"]' in text


def test_dockerignore_keeps_the_context_to_what_is_installed():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("**") + 1:].count("!uv.lock") == 1
    assert {"!pyproject.toml", "!README.md", "!components/", "!services/", "!pipelines/"} <= set(lines)
    assert not any(line.startswith("!") and (".venv" in line or "tests" in line or ".git" in line) for line in lines)


def test_make_images_names_each_dockerfile():
    makefile = REPO / "Makefile"
    if not makefile.is_file() or not re.search(r"^images:", makefile.read_text(), flags=re.MULTILINE):
        pytest.skip("Makefile has no `images` target yet; add: images:  ## Print the docker build commands (pipe to sh)\n\t@sh k8s/images.sh")
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-s", "images"], capture_output=True, text=True, check=True, cwd=REPO).stdout
    for dockerfile in DOCKERFILES:
        assert f"-f {dockerfile} " in out
