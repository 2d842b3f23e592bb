"""The batch-scoring pipeline: one task that scores a file or prefix in chunks (cluster or kfp.local).

On a cluster it gets exactly the training pipeline's settings (S3 Secret, flywheel-config,
placement, non-root) through the same ``apply_cluster``.
"""

from kfp import dsl

from components import kfp_components as c
from pipelines.training import ClusterOptions, apply_cluster


def build_batch(cluster: ClusterOptions | None = None, image: str = c.COMPONENT_IMAGE, pipeline_root: str | None = None):
    """The batch-scoring pipeline on ``image``, with the cluster's Kubernetes settings when given."""

    @dsl.pipeline(name="flywheel-batch-scoring", description="Score a CSV/Parquet file or prefix with a registered model.",
                  pipeline_root=pipeline_root)
    def batch_scoring_pipeline(data: str, output: str, store: str, run: str, model: str = "demo", version: str = "") -> None:
        task = c.batch_predict(data=data, output=output, version=version, store=store, model=model, run=run)
        task.set_container_image(image)
        task.set_caching_options(False).set_retry(num_retries=2, backoff_duration="10s")
        task.set_cpu_request("1").set_memory_request("2G").set_memory_limit("4G")
        apply_cluster(task, cluster)

    return batch_scoring_pipeline


batch_scoring_pipeline = build_batch()


def compile_batch(output: str, image: str | None = None, cluster: ClusterOptions | None = None,
                  pipeline_root: str | None = None) -> str:
    """Write the batch-scoring pipeline's IR YAML (with the cluster's settings, image and pipeline root when given)."""
    from pipelines.compile import write_package

    return str(write_package(build_batch(cluster, image or c.COMPONENT_IMAGE, pipeline_root), output))


def run_local(data: str, output: str, store: str, model: str, version: str = "", pipeline_root: str = ".flywheel/pipeline_root") -> None:
    """Run it on kfp.local (the embedded default)."""
    from pathlib import Path

    from kfp import local

    from pipelines.local.runner import new_run_name

    root = Path(pipeline_root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    batch_scoring_pipeline(data=data, output=output, store=store, run=new_run_name(model), model=model, version=version)
