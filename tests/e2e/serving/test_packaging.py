"""Packaging: `bentoml build` from the lock, offline, produces a Bento with its Dockerfile."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.serving.launch import PackagingError, build_bento


def test_build_bento_offline_from_the_lock(tmp_path: Path) -> None:
    bento = build_bento(tmp_path / "bentoml-home")
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM" in dockerfile
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "bentoml==" in reqs and "scikit-learn==" in reqs and "pytest" not in reqs
    src = bento / "src"
    assert (src / "services" / "serving" / "service.py").is_file()
    assert (src / "services" / "serving" / "worker.py").is_file() and (src / "components" / "compat.py").is_file()
    assert (src / "components" / "predict.py").is_file()
    assert not (src / "tests").exists()
    assert "services.serving.worker:FlywheelServing" in (bento / "bento.yaml").read_text()


def test_bentoml_home_inside_the_project_is_refused() -> None:
    with pytest.raises(PackagingError, match="inside the project"):
        build_bento(Path(__file__).parent / "bentoml-home")
