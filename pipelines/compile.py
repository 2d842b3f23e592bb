"""Compile the training pipeline to KFP IR YAML for a cluster."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from components.kfp_components import COMPONENT_IMAGE
from pipelines.training import DEFAULT, ClusterOptions, build


def compile_pipeline(output: str | Path, image: str = COMPONENT_IMAGE, cluster: ClusterOptions | None = None,
                     pipeline_root: str | None = None, parallelism: int = DEFAULT.parallelism) -> Path:
    """Write the pipeline package.

    Every component runs on ``image`` (the project's component image); ``cluster`` adds the
    Kubernetes settings; ``pipeline_root`` (e.g. ``s3://bucket/pipeline_root``) puts the
    run artifacts in the object store; ``parallelism`` (the setting) search tasks run at once.
    """
    return write_package(build(cluster, parallelism, image, pipeline_root), output)


def write_package(pipeline, output: str | Path) -> Path:
    """Compile any of the project's pipelines (built with its image and pipeline root) to ``output``."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(out))
    return out
