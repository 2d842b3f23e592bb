"""The `flywheel` command line: thin wrappers over the stages, runners and services."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Flywheel: train, serve, monitor and retrain tabular models in one loop.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
models = typer.Typer(help="Inspect and manage the model registry.", no_args_is_help=True)
app.add_typer(models, name="models")


def _console(stderr: bool = False) -> Console:
    """A console that never wraps a path or a message mid-word when the output is a pipe or a file."""
    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(stderr=stderr, width=None if tty else 1000, soft_wrap=not tty)


console = _console()
err = _console(stderr=True)

StoreOpt = Annotated[Optional[str], typer.Option("--store", help="Store URI (directory, file://… or s3://bucket/prefix); default FLYWHEEL_STORE.")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Model name; default FLYWHEEL_MODEL or 'demo'.")]


def _settings(**overrides):
    from components.settings import load_settings

    return load_settings(**overrides)


def _registry(store: str | None, model: str | None):
    from components.registry import Registry
    from components.store import open_store

    s = _settings(store=store, model=model)
    return Registry(open_store(s.store, s), s.model)


@app.command()
def train(
    data: Annotated[str, typer.Option(help="CSV or Parquet file, or a folder/prefix of them (local path, s3:// URI or store key).")],
    target: Annotated[str, typer.Option(help="The column to predict.")],
    task: Annotated[Optional[str], typer.Option(help="classification or regression; inferred when omitted.")] = None,
    timestamp: Annotated[Optional[str], typer.Option(help="Timestamp column: enables a time-ordered split.")] = None,
    id_column: Annotated[Optional[list[str]], typer.Option("--id-column", help="Identifier column(s), never used as features.")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(help="Column(s) to leave out.")] = None,
    model: ModelOpt = None,
    store: StoreOpt = None,
    trials: Annotated[Optional[int], typer.Option(help="Search budget in trials, shared among the model families "
                                                       "(default: each family's default points, the fast first model).")] = None,
    time_budget: Annotated[Optional[float], typer.Option(help="Search budget in minutes: a search task starts no new "
                                                              "trial after this (default: no limit).")] = None,
    search_space: Annotated[Optional[str], typer.Option(help="YAML file of the search space, replacing the project's "
                                                             "(components/search_space.yaml is the example).")] = None,
    verbose: Annotated[bool, typer.Option(help="Show kfp.local's task logs.")] = False,
) -> None:
    """Run the training pipeline on kfp.local and print the version and the promotion decision."""
    from components.data import DatasetSpec
    from components.ingest import preview
    from components.sources import locate
    from pipelines.local.runner import run_training

    if task not in (None, "classification", "regression"):
        raise typer.BadParameter("must be classification or regression", param_hint="--task")
    s = _settings(store=store, model=model, trials=trials, time_budget_minutes=time_budget, search_space=search_space)
    spec = DatasetSpec(data, target, task, timestamp, tuple(id_column or ()), tuple(exclude or ()), s.model)  # type: ignore[arg-type]
    located = locate(spec, s)  # once per run: the preview, the preflight and the run's fingerprint share it
    schema, first = preview(spec, located, s)
    console.print(columns_table(schema, first))
    for c in schema.features:
        if c.missing_indicator:
            err.print(f"[yellow]warning:[/yellow] column {c.name!r} is {c.null_rate:.0%} missing: {c.action}", highlight=False)
    for d in schema.dropped:
        err.print(f"[yellow]warning:[/yellow] column {d['name']!r} is dropped: {d['reason']}", highlight=False)
    with console.status(f"Training {s.model} on {data} (kfp.local)…"):
        result = run_training(spec, s, quiet=not verbose, located=located)
    verdict = "[green]promoted[/green]" if result["promoted"] else "[yellow]not promoted[/yellow]"
    cached = " (served from cache: same data as before)" if result["cached"] else ""
    console.print(f"{s.model} [bold]{result['version']}[/bold] {verdict}{cached}: {result['reason']}")
    console.print(f"champion: {result['champion']}  run: {result['run']}  data fingerprint: {result['fingerprint']}")
    for refusal in _refusals(s, result["version"]):
        err.print(f"[yellow]warning:[/yellow] {refusal}", highlight=False)


def _refusals(s, version: str) -> list[str]:
    """The sentences of the families the version's search refused over the refit's memory budget."""
    import json

    from components.package import TRIALS
    from components.registry import Registry
    from components.store import NotFound, open_store

    try:
        trials = json.loads(Registry(open_store(s.store, s), s.model).read(version, TRIALS))
    except NotFound:  # a version registered before the search recorded its trials
        return []
    return [t["error"] for t in trials if t.get("state") == "refused"]


def columns_table(schema, source: str) -> Table:
    """The columns the model will see, as `flywheel train` shows them before training."""
    table = Table(title=f"Columns of {source}", title_justify="left")
    for col in ("column", "kind", "missing", "action"):
        table.add_column(col)
    for row in schema.column_table():
        table.add_row(row["column"], row["kind"], row["missing"], row["action"])
    return table


@app.command("compile")
def compile_(
    output: Annotated[Path, typer.Option(help="Where to write the KFP IR YAML.")] = Path("flywheel-training.yaml"),
    image: Annotated[Optional[str], typer.Option(help="Component image (default FLYWHEEL_COMPONENT_IMAGE, else this checkout's source-derived tag).")] = None,
    s3_secret: Annotated[str, typer.Option(help="Kubernetes Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.")] = "flywheel-s3",
    s3_endpoint: Annotated[Optional[str], typer.Option(help="S3/MinIO endpoint as the step pods reach it (default: AWS_ENDPOINT_URL).")] = None,
    node_selector: Annotated[Optional[list[str]], typer.Option(help="key=value node label for every task (repeatable).")] = None,
    toleration: Annotated[Optional[list[str]], typer.Option(help="key[=value]:Effect toleration for every task (repeatable).")] = None,
    pipeline_root: Annotated[Optional[str], typer.Option(help="Artifact root in the object store (default: <store>/pipeline_root for s3 stores).")] = None,
    store: StoreOpt = None,
) -> None:
    """Compile the training pipeline to KFP IR YAML, with the cluster's Kubernetes settings."""
    from components.settings import setting_sources
    from pipelines.cluster import component_image
    from pipelines.compile import compile_pipeline

    s, cluster, root = _cluster_options(s3_secret, s3_endpoint, node_selector, toleration, pipeline_root, store)
    path = compile_pipeline(output, image or component_image(s), cluster, root, s.parallelism)
    console.print(f"wrote {path} (search parallelism {s.parallelism}, from {setting_sources()['parallelism']})",
                  highlight=False)


def _cluster_options(s3_secret, s3_endpoint, node_selector, toleration, pipeline_root, store):
    """The settings (refused when a cluster run cannot apply them), cluster options and pipeline root both compile commands share."""
    from pipelines.settings_routes import check_cluster_compile
    from pipelines.training import ClusterOptions

    s = _settings(store=store)
    check_cluster_compile(s)
    cluster = ClusterOptions(s3_secret=s3_secret, s3_endpoint_url=s3_endpoint or s.s3_endpoint_url,
                             node_selector=dict(_pair(x, "--node-selector") for x in node_selector or ()),
                             tolerations=tuple(_toleration(t) for t in toleration or ()))
    root = pipeline_root or (f"{s.store.rstrip('/')}/pipeline_root" if s.store.startswith("s3://") else None)
    return s, cluster, root


DataOpt = Annotated[str, typer.Option(help="Dataset in the object store: s3:// URI or a key of the store.")]
TargetOpt = Annotated[str, typer.Option(help="The column to predict.")]
HostOpt = Annotated[Optional[str], typer.Option("--host", help="KFP API, e.g. http://ml-pipeline.kubeflow:8888 (default FLYWHEEL_KFP_HOST).")]


def _cluster_spec(data, target, task, timestamp, id_column, exclude, name):
    from components.data import DatasetSpec

    return DatasetSpec(data, target, task, timestamp, tuple(id_column or ()), tuple(exclude or ()), name)


@app.command()
def submit(
    data: DataOpt,
    target: TargetOpt,
    task: Annotated[Optional[str], typer.Option(help="classification or regression; inferred when omitted.")] = None,
    timestamp: Annotated[Optional[str], typer.Option(help="Timestamp column.")] = None,
    id_column: Annotated[Optional[list[str]], typer.Option("--id-column", help="Identifier column(s).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(help="Column(s) to leave out.")] = None,
    host: HostOpt = None,
    experiment: Annotated[Optional[str], typer.Option(help="KFP experiment (default FLYWHEEL_KFP_EXPERIMENT).")] = None,
    image: Annotated[Optional[str], typer.Option(help="Component image.")] = None,
    s3_endpoint: Annotated[Optional[str], typer.Option(help="S3/MinIO endpoint as the pods reach it (default AWS_ENDPOINT_URL).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the run to finish (exit 1 unless it succeeded).")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 3600,
    model: ModelOpt = None,
    store: StoreOpt = None,
) -> None:
    """Run the training pipeline on Kubeflow Pipelines: upload it (if changed) and start a run."""
    from pipelines.cluster import submit as run_submit

    s = _settings(model=model, store=store, kfp_host=host, kfp_experiment=experiment)
    out = run_submit(s, _cluster_spec(data, target, task, timestamp, id_column, exclude, s.model), image,
                     s3_endpoint, wait, timeout)
    _note_step_settings(s)
    console.print(f"run {out['run_id']} ({out['run']}) of {out['pipeline_version']}"
                  f"{' (uploaded)' if out['uploaded'] else ''}: {out['url']}", highlight=False)
    if wait:
        console.print(f"state: {out['state']}")
        if out["state"] != "SUCCEEDED":
            err.print(f"[red]error:[/red] run {out['run_id']} ended {out['state']}; see {out['url']}", highlight=False)
            raise typer.Exit(1)


@app.command()
def schedule(
    cron: Annotated[str, typer.Option(help="Cron: 5 fields (min hour day month weekday) or KFP's 6 (seconds first).")],
    name: Annotated[str, typer.Option(help="Name of the recurring run (one per name).")],
    data: DataOpt,
    target: TargetOpt,
    task: Annotated[Optional[str], typer.Option(help="classification or regression.")] = None,
    timestamp: Annotated[Optional[str], typer.Option(help="Timestamp column.")] = None,
    id_column: Annotated[Optional[list[str]], typer.Option("--id-column", help="Identifier column(s).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(help="Column(s) to leave out.")] = None,
    host: HostOpt = None,
    experiment: Annotated[Optional[str], typer.Option(help="KFP experiment.")] = None,
    image: Annotated[Optional[str], typer.Option(help="Component image.")] = None,
    s3_endpoint: Annotated[Optional[str], typer.Option(help="S3/MinIO endpoint as the pods reach it.")] = None,
    model: ModelOpt = None,
    store: StoreOpt = None,
) -> None:
    """Create a recurring run of the training pipeline on Kubeflow Pipelines (idempotent by name)."""
    from pipelines.cluster import schedule as run_schedule

    s = _settings(model=model, store=store, kfp_host=host, kfp_experiment=experiment)
    out = run_schedule(s, _cluster_spec(data, target, task, timestamp, id_column, exclude, s.model), name, cron,
                       image, s3_endpoint)
    _note_step_settings(s)
    console.print(f"recurring run {out['recurring_run_id']} ({out['name']}, cron '{out['cron']}') of {out['pipeline_version']}",
                  highlight=False)


def _note_step_settings(s) -> None:
    """Say which settings given a value here the run's steps take from the cluster's ConfigMap instead."""
    from pipelines.settings_routes import CONFIG_MAP, not_reaching_the_steps

    if names := not_reaching_the_steps(s):
        err.print(f"[yellow]note:[/yellow] the run's steps take {', '.join(names)} from ConfigMap {CONFIG_MAP} in the "
                  "cluster (the chart's config), not from the values set here", highlight=False)


@app.command("compile-batch")
def compile_batch(
    output: Annotated[Path, typer.Option(help="Where to write the batch-scoring pipeline's KFP IR YAML.")] = Path("flywheel-batch-scoring.yaml"),
    image: Annotated[Optional[str], typer.Option(help="Component image (default FLYWHEEL_COMPONENT_IMAGE, else this checkout's source-derived tag).")] = None,
    s3_secret: Annotated[str, typer.Option(help="Kubernetes Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.")] = "flywheel-s3",
    s3_endpoint: Annotated[Optional[str], typer.Option(help="S3/MinIO endpoint as the step pods reach it (default: AWS_ENDPOINT_URL).")] = None,
    node_selector: Annotated[Optional[list[str]], typer.Option(help="key=value node label for the task (repeatable).")] = None,
    toleration: Annotated[Optional[list[str]], typer.Option(help="key[=value]:Effect toleration for the task (repeatable).")] = None,
    pipeline_root: Annotated[Optional[str], typer.Option(help="Artifact root in the object store (default: <store>/pipeline_root for s3 stores).")] = None,
    store: StoreOpt = None,
) -> None:
    """Compile the batch-scoring pipeline (one chunked scoring task) with the same cluster settings as training."""
    from pipelines.batch import compile_batch as run_compile
    from pipelines.cluster import component_image

    s, cluster, root = _cluster_options(s3_secret, s3_endpoint, node_selector, toleration, pipeline_root, store)
    console.print(f"wrote {run_compile(str(output), image or component_image(s), cluster, root)}")


@app.command("settings")
def settings_(
    schema: Annotated[bool, typer.Option("--schema", help="Print the settings' JSON schema instead.")] = False,
) -> None:
    """The effective settings, where each value came from, its variable, and how it reaches a cluster run."""
    from components.settings import env_name, setting_sources, settings_schema
    from pipelines.settings_routes import describe

    if schema:
        print(json.dumps(settings_schema(), indent=2))
        return
    s = _settings()
    sources = setting_sources()
    table = Table(title="Settings", title_justify="left")
    for col in ("setting", "value", "from", "variable", "on a cluster"):
        table.add_column(col)
    for name, value in s.model_dump(mode="json").items():
        table.add_row(name, "" if value is None else json.dumps(value) if not isinstance(value, str) else value,
                      sources[name], env_name(name), describe(name))
    console.print(table)


def _pair(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"{text!r} is not key=value", param_hint=option)
    return key, value


def _toleration(text: str) -> dict[str, str]:
    spec, sep, effect = text.rpartition(":")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise typer.BadParameter(f"{text!r} is not key[=value]:NoSchedule|PreferNoSchedule|NoExecute", param_hint="--toleration")
    key, eq, value = spec.partition("=")
    return {"key": key, "operator": "Equal" if eq else "Exists", "value": value or None, "effect": effect}


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
    version: Annotated[Optional[str], typer.Option(help="Pin a model version; default follows the champion.")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind: loopback here; 0.0.0.0 in a container (the image and the chart say so).")] = "127.0.0.1",
    model: ModelOpt = None,
    store: StoreOpt = None,
) -> None:
    """Run the BentoML serving API locally (bentoml serve); Ctrl-C flushes the prediction log and stops.

    A worker that cannot start (the store unreachable or not writable, say) ends it at once: one sentence, exit code 1.
    """
    from services.serving.launch import serve as run

    raise typer.Exit(run(_settings(model=model, store=store), port, version, host))


@app.command()
def predict(
    data: Annotated[str, typer.Option(help="CSV/Parquet file or prefix: local path, s3:// URI or store:key.")],
    output: Annotated[str, typer.Option(help="Output .parquet/.csv file, or a folder of Parquet parts (path, s3://, store:).")],
    version: Annotated[Optional[str], typer.Option(help="Model version; default the champion.")] = None,
    model: ModelOpt = None,
    store: StoreOpt = None,
) -> None:
    """Batch-score a whole file in chunks with the serving validation; bad rows go to <output without suffix>.errors.csv."""
    from components.predict import predict_batch

    result = predict_batch(_settings(model=model, store=store), data, output, version)
    console.print_json(json.dumps(result.to_dict(), default=str))


@app.command()
def bento(
    home: Annotated[str, typer.Option(help="BENTOML_HOME (must be outside the project).")] = str(Path.home() / "bentoml"),
) -> None:
    """Build the serving Bento offline from uv.lock (bentoml build); prints where its Dockerfile is."""
    from services.serving.launch import build_bento

    console.print(str(build_bento(home)))


@app.command()
def monitor(
    ui: Annotated[bool, typer.Option("--ui", help="Serve the Evidently UI over the monitoring workspace instead of a pass.")] = False,
    port: Annotated[int, typer.Option(help="Port of the Evidently UI (with --ui).")] = 8000,
    data: Annotated[Optional[str], typer.Option(help="Dataset to retrain on when the monitor decides to; without it no retrain starts.")] = None,
    target: Annotated[Optional[str], typer.Option(help="Target column of --data.")] = None,
    timestamp: Annotated[Optional[str], typer.Option(help="Timestamp column of --data.")] = None,
    include_feedback: Annotated[Optional[bool], typer.Option(
        "--include-feedback/--no-include-feedback",
        help="Retrain on the dataset plus the labelled production rows (default: the include_feedback setting).")] = None,
    package: Annotated[Optional[Path], typer.Option(help="Compiled pipeline uploaded to KFP when the runner is kfp (default: compiled from the code installed here).")] = None,
    model: ModelOpt = None,
    store: StoreOpt = None,
) -> None:
    """One monitoring pass: drift, quality, report, and a retrain when the thresholds say so (the CronJob's entry point)."""
    import subprocess

    from components.arrow_pool import load_with_jemalloc

    load_with_jemalloc()  # before anything imports pyarrow: see components/arrow_pool.py
    from components.data import DatasetSpec
    from components.store import open_store
    from pipelines.triggers import make_trigger
    from services.monitoring.monitor import run_pass, table, ui_command, verdict

    s = _settings(model=model, store=store)
    if ui:
        raise typer.Exit(subprocess.call(ui_command(s, port)))
    if bool(data) != bool(target):
        raise typer.BadParameter("--data and --target go together", param_hint="--data/--target")
    from services.monitoring.report import check_at_start_up

    check_at_start_up(s)  # an Evidently that changed fails here, not in the report after the decision
    spec = DatasetSpec(source=data, target=target, timestamp=timestamp, name=s.model) if data and target else _trained_on(s)
    include = s.include_feedback if include_feedback is None else include_feedback
    trigger = make_trigger(s, spec, package, include, reuses_champion_data=not data)
    summary = run_pass(s, open_store(s.store, s), trigger)
    console.print(table(summary), highlight=False)
    # the last line says how the pass ended, in one sentence: all a Job's log shows at a glance
    (err if summary.exit_code else console).print(verdict(summary), highlight=False, markup=False)
    raise typer.Exit(summary.exit_code)


# `flywheel run` replaces these: a monitoring pass per period of 2000 rows, minutes apart, must be
# able to retrain every time, and the server must swap within the loop's patience.
LOOP_SETTINGS = {"cooldown_minutes": 0, "min_rows": 500, "serving_poll_seconds": 1.0}


@app.command()
def run(
    port: Annotated[Optional[int], typer.Option(help="Serving port (default: a free loopback port).")] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Continue from the store instead of starting the demo model clean.")] = False,
    force_reset: Annotated[bool, typer.Option("--force-reset", help="Allow the clean start to delete a model other than 'demo', or in a non-local store.")] = False,
    model: ModelOpt = None,
    store: StoreOpt = None,
) -> None:
    """The whole loop on this machine: train, serve, drift, retrain and roll out (what `make run` runs)."""
    from pipelines.loop.run import check_store_writable, run_loop

    given = _settings(model=model, store=store)
    s = _settings(model=model, store=store, **LOOP_SETTINGS)
    console.print("the loop's periods are minutes apart: it runs with " + ", ".join(
        f"{name}={value} (instead of {getattr(given, name)})" for name, value in LOOP_SETTINGS.items()), highlight=False)
    check_store_writable(s)
    result = run_loop(s, lambda line: console.print(line, highlight=False), port=port, fresh=not keep,
                      force_reset=force_reset)
    _print_loop(result)
    if result.failed_requests or result.logged != result.served:
        raise typer.Exit(1)


def _print_loop(result) -> None:
    versions = Table(title="Model versions")
    for col in ("version", "metric", "holdout score", "decision"):
        versions.add_column(col)
    for v in result.versions:
        star = " ★" if v["version"] == result.champion else ""
        score = f"{v['score']:.4f}" if isinstance(v["score"], float) else "-"
        versions.add_row(v["version"] + star, v["metric"] or "", score, v["reason"] or "")
    console.print(versions)
    passes = Table(title="Monitoring passes")
    for col in ("period", "rows", "drift share", "decision", "new version"):
        passes.add_column(col)
    for p in result.passes:
        share = f"{p['drift_share']:.2f}" if p["drift_share"] is not None else "-"
        new = f"{p['new_version']} ({'promoted' if p['promoted'] else 'kept out'})" if p["new_version"] else "-"
        passes.add_row(p["period"], str(p["rows"]), share, "RETRAIN" if p["retrain"] else "no retrain", new)
    console.print(passes)
    for p in result.passes:
        report = f"{result.store}/{p['report']}" if p["report"] else "-"
        console.print(f"{p['period']}: {p['reason']}\n  report: {report}", highlight=False)
    for swap in result.swaps:
        console.print(f"swap after {swap['period']}: {swap['from']} -> {swap['to']}, answering "
                      f"{swap['seconds_from_first_drifted_request']} s after the period's first request")
    ok = "[green]" if not result.failed_requests and result.logged == result.served else "[red]"
    console.print(f"{ok}requests: {result.served} records served, {result.failed_requests} failed, "
                  f"{result.logged} logged to the store, {result.feedback} labels received[/]")
    console.print(f"champion: {result.champion}; store: {result.store}; {result.seconds:.0f} s in all")


def _trained_on(s):
    """Without --data, a retrain reads the source the champion was trained on (its manifest says which).

    None when there is no champion or it records no dataset; a store that cannot be read raises.
    """
    from components.store import open_store
    from pipelines.triggers import champion_spec

    return champion_spec(open_store(s.store, s), s.model)


@app.command()
def deploy(
    version: Annotated[Optional[str], typer.Argument(help="Version to roll out; default the champion.")] = None,
    cluster: Annotated[Optional[bool], typer.Option(
        "--cluster/--embedded",
        help="Roll out to the serving Deployment, or check the local server's champion; default: the cluster in a pod or with --kubeconfig.")] = None,
    kubeconfig: Annotated[Optional[Path], typer.Option(help="kubeconfig of the cluster (implies --cluster; default with --cluster: $KUBECONFIG or ~/.kube/config).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds the rollout may take before it is undone; default FLYWHEEL_DEPLOY_TIMEOUT_SECONDS.")] = None,
    model: ModelOpt = None,
    store: StoreOpt = None,
) -> None:
    """Roll VERSION out as the pipeline's deploy step does; a failed rollout is undone and exits 1.

    Cluster: the serving Deployment (FLYWHEEL_SERVING_NAMESPACE/_DEPLOYMENT) rolls to VERSION.
    Embedded: the local server follows the champion, so VERSION must be it; it is checked, and the pointer goes back if it cannot serve.
    """
    from components.deploy import deploy as roll_out

    if cluster is False and kubeconfig:
        raise typer.BadParameter("names a cluster, so it cannot go with --embedded", param_hint="--kubeconfig")
    mode = "cluster" if cluster or kubeconfig else "embedded" if cluster is False else "auto"
    result = roll_out(_settings(model=model, store=store), version, mode, timeout,
                      kubeconfig=str(kubeconfig) if kubeconfig else None)
    console.print_json(json.dumps(result.to_dict()))
    result.checked()


@models.command("list")
def models_list(model: ModelOpt = None, store: StoreOpt = None) -> None:
    """Every version with its holdout score and promotion decision."""
    reg = _registry(store, model)
    champ = reg.champion()
    table = Table(title=f"{reg.model} in {reg.store.uri}")
    for col in ("version", "created", "metric", "score", "decision", "champion"):
        table.add_column(col)
    for v in reg.versions():
        m = reg.manifest(v)
        d = reg.decision(v) or {}
        table.add_row(v, m.get("created_at", ""), m.get("primary_metric", ""), f"{m.get('score', float('nan')):.4f}",
                      d.get("reason", ""), "★" if champ and champ.version == v else "")
    console.print(table)


@models.command("show")
def models_show(version: str, model: ModelOpt = None, store: StoreOpt = None) -> None:
    """A version's manifest, metrics and decision, then its search's leaderboard (best trial first)."""
    reg = _registry(store, model)
    metrics = reg.metrics(version)
    console.print_json(json.dumps({"manifest": reg.manifest(version), "metrics": metrics,
                                   "decision": reg.decision(version)}, default=str))
    if metrics.get("search"):
        console.print(leaderboard_table(metrics["search"], f"Search of {reg.model} {version}"))


def leaderboard_table(search: dict, title: str) -> Table:
    """A version's search as `flywheel models show` prints it: the best trial, the counts, the leaderboard."""
    from components.tune import cells, params_text

    n = search["trials"]
    table = Table(title=f"{title}: best trial {search['best']}; {n['complete']} complete, {n['pruned']} pruned, "
                        f"{n['failed']} failed" + (f", {n['refused']} refused over the memory budget" if n.get("refused") else ""),
                  title_justify="left")
    for col in ("rank", "trial", "family", "parameters", "CV score", "folds", "seconds", "state"):
        table.add_column(col)
    for rank, row in enumerate(search["leaderboard"], start=1):
        score, state = cells(row)
        table.add_row(str(rank), row["id"], row["family"], params_text(row), score, str(row["folds"]), str(row["seconds"]), state)
    return table


@models.command("promote")
def models_promote(version: str, model: ModelOpt = None, store: StoreOpt = None) -> None:
    """Make VERSION the champion (by hand, bypassing the gate)."""
    reg = _registry(store, model)
    c = reg.promote(version, "promoted by hand")
    console.print(f"champion of {reg.model}: {c.version} (was {c.previous})")


@models.command("rollback")
def models_rollback(model: ModelOpt = None, store: StoreOpt = None) -> None:
    """Serve the previous champion again."""
    reg = _registry(store, model)
    c = reg.rollback()
    console.print(f"champion of {reg.model}: {c.version} (rolled back from {c.previous})")


def main() -> None:
    """Entry point: user errors end with one sentence and exit code 1, never a traceback."""
    from components.compat import CompatError
    from components.data import DataError
    from components.deploy import DeployError
    from components.registry import RegistryError
    from components.settings import ConfigError
    from components.store import StoreError
    from pipelines.kfp_client import KFPError
    from pipelines.local.runner import PipelineFailed
    from pipelines.loop.run import LoopError
    from services.serving.startup import StartupFailed

    try:
        app()
    except (DataError, ConfigError, StoreError, RegistryError, PipelineFailed, LoopError, KFPError, CompatError, DeployError,
            StartupFailed) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]")
        sys.exit(130)


if __name__ == "__main__":
    main()
