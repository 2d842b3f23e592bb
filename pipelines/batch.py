"""The batch-scoring pipeline: one task that scores a file or prefix in chunks (cluster or kfp.local)."""

from kfp import dsl

from components import kfp_components as c


@dsl.pipeline(name="flywheel-batch-scoring", description="Score a CSV/Parquet file or prefix with a registered model.")
def batch_scoring_pipeline(data: str, output: str, store: str, run: str, model: str = "demo", version: str = "") -> None:
    task = c.batch_predict(data=data, output=output, version=version, store=store, model=model, run=run)
    task.set_caching_options(False).set_retry(num_retries=2, backoff_duration="10s")
    task.set_cpu_request("1").set_memory_request("2G").set_memory_limit("4G")


def compile_batch(output: str) -> str:
    """Write the batch-scoring pipeline's IR YAML."""
    from pathlib import Path

    from kfp import compiler

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(batch_scoring_pipeline, output)
    return output


def run_local(data: str, output: str, store: str, model: str, version: str = "", pipeline_root: str = ".flywheel/pipeline_root") -> None:
    """Run it on kfp.local (the embedded default)."""
    from pathlib import Path

    from kfp import local

    from pipelines.local import new_run_name

    root = Path(pipeline_root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    batch_scoring_pipeline(data=data, output=output, store=store, run=new_run_name(model), model=model, version=version)
