"""The image recipes and the script that builds them (`make images`)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from k8s_support import REPO

from pipelines.image_tag import source_tag

SCRIPT = REPO / "k8s" / "images.sh"
DOCKERFILES = {
    "components/Dockerfile": "flywheel-components",
    "services/serving/Dockerfile": "flywheel-serving",
    "services/monitoring/Dockerfile": "flywheel-monitor",
}


def run_script(*flags: str, **env: str) -> list[str]:
    """The build commands `k8s/images.sh --print` shows (nothing is built)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("IMAGE_REGISTRY", "IMAGE_TAG", "BASE_IMAGE", "BUILDER")}
    proc = subprocess.run(["bash", str(SCRIPT), "--print", *flags], capture_output=True, text=True, check=True, cwd=REPO,
                          env={**clean, "BUILDER": "buildah", **env})
    return [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]


def test_images_script_builds_one_image_per_dockerfile_with_the_source_derived_tag():
    tag = source_tag(REPO)
    lines = run_script()
    assert len(lines) == 3
    for (dockerfile, image), line in zip(DOCKERFILES.items(), lines):
        assert line.startswith("buildah ") and " bud --isolation chroot --layers " in line and line.endswith(" .")
        assert ("--storage-driver vfs" in line or "--storage-driver overlay" in line) and "--ulimit nofile=1024:20000" in line
        assert f"-f {dockerfile} " in line
        assert f"-t ghcr.io/flywheel/{image}:{tag} " in line
        assert (REPO / dockerfile).is_file()
    components = f"ghcr.io/flywheel/flywheel-components:{tag}"
    # The component image knows its own immutable reference (what a retrain compiles against) ...
    assert f"--build-arg COMPONENT_IMAGE={components} " in lines[0]
    assert re.search(r"--build-arg BASE_IMAGE=localhost/flywheel-base:bookworm-[0-9a-f]{12} ", lines[0])
    # ... the serving and monitor images are built on it (the monitor's retrains compile against it).
    assert f"--build-arg COMPONENTS_IMAGE={components} " in lines[1]
    assert f"--build-arg COMPONENTS_IMAGE={components} " in lines[2]
    assert "support.Dockerfile" in run_script("--support")[3]


def test_images_script_honours_registry_tag_and_base():
    lines = run_script(IMAGE_REGISTRY="registry.example.com/ml", IMAGE_TAG="2.0.1", BASE_IMAGE="python:3.11-slim-bookworm")
    assert all("registry.example.com/ml/flywheel-" in line and ":2.0.1" in line for line in lines)
    assert "ghcr.io" not in "\n".join(lines)
    assert "--build-arg BASE_IMAGE=python:3.11-slim-bookworm " in lines[0]


def _stage(text: str, name: str) -> str:
    return text.split(f" AS {name}\n", 1)[1].split("\nFROM ", 1)[0]


def test_the_component_image_is_multi_stage_from_the_lock_file_on_the_base_argument():
    text = (REPO / "components/Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+) AS (\w+)", text, flags=re.MULTILINE)
    assert froms == [("${BASE_IMAGE}", "builder"), ("${BASE_IMAGE}", "runtime")]
    assert re.search(r"^ARG BASE_IMAGE=\S+", text, flags=re.MULTILINE)
    assert "COPY pyproject.toml uv.lock ./" in text
    # The dependencies from the lock file only, then the project's wheel into its own prefix ...
    assert text.count("uv sync --frozen --no-dev --no-install-project") == 1
    assert "uv pip install --python /opt/venv/bin/python --no-deps --prefix /opt/project" in text
    # ... copied as two layers, the dependencies first: a code change reuses their layer.
    runtime = _stage(text, "runtime")
    assert runtime.index("COPY --from=builder /opt/venv /opt/venv") < runtime.index("COPY --from=builder /opt/project /opt/venv")
    # uv from the package registry, pinned to the version the Makefile uses; no registry image.
    uv = re.search(r"^UV_VERSION := (\S+)", (REPO / "Makefile").read_text(), flags=re.MULTILINE).group(1)
    assert f"ARG UV_VERSION={uv}" in text and "COPY --from=ghcr.io" not in text


@pytest.mark.parametrize("dockerfile", ["services/serving/Dockerfile", "services/monitoring/Dockerfile"])
def test_serving_and_monitor_are_the_component_image_with_their_own_entry_point(dockerfile):
    text = (REPO / dockerfile).read_text()
    froms = re.findall(r"^FROM (.+)$", text, flags=re.MULTILINE)
    assert froms == ["${COMPONENTS_IMAGE}"]  # the component image of the same build (images.sh passes it)
    assert re.search(r"^ARG COMPONENTS_IMAGE=\S+:\S+$", text, flags=re.MULTILINE)
    # no files of their own: their layers are the component image's
    assert not re.search(r"^(COPY|ADD|RUN) ", text, flags=re.MULTILINE)
    assert re.search(r"^ENTRYPOINT \[\"flywheel\", ", text, flags=re.MULTILINE)


def test_the_support_image_shares_the_component_builder_up_to_the_dependencies():
    components = _stage((REPO / "components/Dockerfile").read_text(), "builder")
    support = _stage((REPO / "tests/containers/support.Dockerfile").read_text(), "builder")
    deps = components.split("COPY . ./")[0]
    assert support.startswith(deps.rsplit("\n# The rest", 1)[0])


@pytest.mark.parametrize("dockerfile", list(DOCKERFILES))
def test_images_run_as_numeric_non_root_without_credentials(dockerfile):
    text = (REPO / dockerfile).read_text()
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users and users[-1] == "10001:10001"
    assert "HEALTHCHECK" in text
    assert not re.search(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY)|PASSWORD|TOKEN", text)


def test_serving_image_serves_on_3000_with_a_healthcheck():
    text = (REPO / "services/serving/Dockerfile").read_text()
    assert 'ENTRYPOINT ["flywheel", "serve"]' in text and 'CMD ["--host", "0.0.0.0", "--port", "3000"]' in text
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


def test_make_images_builds_with_the_script():
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^images:.*\n((?:\t.*\n)+)", makefile, flags=re.MULTILINE).group(1)
    assert "k8s/images.sh" in recipe
