"""Compile the training pipeline to KFP IR YAML for a cluster."""

from __future__ import annotations

from pathlib import Path

import yaml
from kfp import compiler

from components.kfp_components import COMPONENT_IMAGE


def compile_pipeline(output: str | Path, image: str = COMPONENT_IMAGE) -> Path:
    """Write the pipeline package; every component runs on ``image`` (the project's component image)."""
    from pipelines.training import training_pipeline

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(training_pipeline, str(out))
    if image != COMPONENT_IMAGE:
        docs = list(yaml.safe_load_all(out.read_text()))
        for executor in docs[0]["deploymentSpec"]["executors"].values():
            container = executor.get("container", {})
            if container.get("image") == COMPONENT_IMAGE:
                container["image"] = image
        out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out
