"""One route for settings (issue 22, section 1): every setting reaches every runtime in one
format, or is refused where it cannot apply.

Given every setting set to a value other than its default, then: a kfp.local step of the
embedded runner sees all of them; a serving worker's environment rebuilds them; the compiled
pipeline maps every ConfigMap variable into every step, and the chart's rendered ConfigMap (the
real Helm engine) carries each in ``Settings.to_env``'s format; the chart's values schema agrees
with ``flywheel settings --schema``. And the defect: a promotion floor set in the chart guards
the promotion of the run the monitor starts on the cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.settings import ConfigError, Settings, env_name, load_settings, settings_schema
from pipelines.settings_routes import ROUTES, check_cluster_compile, configmap_variables
from tests.integration.k8s.k8s_support import CHART, KUSTOMIZATIONS, NAMESPACE, find, helm_render, kustomize, manifests

REPO = Path(__file__).resolve().parents[2]

# Every setting, each given a value other than its default (valid together, and for the chart).
NON_DEFAULT: dict[str, Any] = {
    "store": "s3://other-bucket/flywheel", "model": "churn", "runner": "kfp",
    "pipeline_root": "s3://other-bucket/pipeline_root", "pipeline_root_max_gib": 2.5, "warm_tasks": False, "run": "run-x",
    "local_search_packing": False, "serving_deadline_fix": False, "report_chi2_homogeneity": False,
    "log_append_wait_seconds": 3.5,
    "s3_endpoint_url": "http://minio.other.svc:9000", "s3_region": "eu-west-1", "s3_max_attempts": 3,
    "s3_connect_timeout_seconds": 7.5, "s3_read_timeout_seconds": 45.5,
    "kfp_host": "http://kfp.other.svc:8888", "kfp_experiment": "exp-2", "kfp_pipeline": "pipe-2",
    "kfp_namespace": "team-a", "kfp_token_path": "/tmp/kfp-token", "component_image": "registry.example/components:7",
    "parallelism": 3, "cv_folds": 4, "holdout_fraction": 0.25, "promotion_margin": 0.01, "min_accuracy": 0.75,
    "min_r2": 0.3, "max_train_rows": 50000, "seed": 7,
    "refit_memory_mb": 3000, "families": "xgboost,lightgbm",
    "train_workers": 3, "train_timeout_seconds": 900.0, "trainer_runtime": "xgboost-custom", "trainer_namespace": "ml",
    "trials": 40, "time_budget_minutes": 12.5, "search_space": "/etc/flywheel/search_space.yaml",
    "window_minutes": 30, "min_rows": 700, "drift_share_threshold": 0.4, "quality_drop_threshold": 0.07,
    "cooldown_minutes": 30, "include_feedback": True, "retry_backoff_minutes": 2.5, "retry_max_attempts": 3,
    "late_log_days": 3, "log_compaction": False, "log_compaction_grace_minutes": 30.0, "sample_size": 20000, "evidently_workspace": "/data/workspace", "monitor_reports": "drift",
    "pushgateway": "http://pushgateway.monitoring.svc:9091",
    "spill_dir": "/var/lib/flywheel/spill", "spill_max_mb": 1500.0, "spill_lease_seconds": 130.0,
    "log_flush_rows": 500, "log_flush_seconds": 1.5, "log_write_timeout_seconds": 6.0, "log_close_seconds": 20.0,
    "log_max_buffer_rows": 100000, "serving_poll_seconds": 3.5, "serving_runtime": "sklearn", "prediction_log": False,
    "serving_strict_fields": True, "serving_workers": 3, "serving_access_log": True, "serving_tracing": True, "serving_deployment": "serving-2", "serving_namespace": "ml",
    "deploy_timeout_seconds": 450.0, "serving_model_version": "v7",
}
# ConfigMap values the chart derives instead of taking a value (pipelines/settings_routes.py says how).
CHART_DERIVED = {"serving_deployment": "flywheel-serving", "serving_namespace": NAMESPACE, "trainer_namespace": NON_DEFAULT["kfp_namespace"]}
# Chart values that are no setting.
NOT_SETTINGS = {"config.s3.existingSecret", "config.kfp.mode"}
# Where the chart's default is deliberately not the settings' default: a cluster's choices.
CLUSTER_DEFAULTS = {
    "store": "pods cannot read a local directory",
    "runner": "retrains run on KFP",
    "s3_endpoint_url": "the kind overlay's MinIO",
    "s3_region": "a region for the S3 client",
    "kfp_host": "the in-cluster KFP API",
    "kfp_namespace": "standalone KFP's namespace (rendered only for multi-user)",
    "pipeline_root": "empty: <store>/pipeline_root, as the local directory is no place for a pod's artifacts",
    "include_feedback": "without labelled production rows a retrain has nothing new to read",
    "spill_max_mb": "below the spill volume's 2Gi limit",
    "serving_model_version": "empty: the deploy step chooses the version through the pod's annotation",
    "trainer_runtime": "the chart's own TrainingRuntime, with the release's security context and resources",
}


def every_setting() -> Settings:
    return load_settings(**NON_DEFAULT)


def _get(tree: dict, path: str) -> Any:
    for key in path.split("."):
        tree = tree[key]
    return tree


def _put(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def chart_values(settings: dict[str, Any]) -> dict[str, Any]:
    """The chart values that set these settings (multi-user KFP and the Evidently UI on, so each derived key renders)."""
    values: dict[str, Any] = {"config": {"kfp": {"mode": "multi-user"}}, "evidentlyUI": {"enabled": True}}
    for field, route in ROUTES.items():
        if route.chart and field in settings:
            _put(values, route.chart, settings[field])
    return values


def config_map(docs: list[dict], namespace: str = NAMESPACE) -> dict[str, str]:
    return find(docs, "ConfigMap", "flywheel-config", namespace)["data"]


def _read_back(field: str, text: str) -> Any:
    """One variable's value as the settings reader takes it (the other settings at their defaults)."""
    return getattr(Settings.from_env({env_name(field): text}), field)


# --- one format -------------------------------------------------------------------------------

def test_every_setting_has_a_non_default_value_and_a_route():
    assert set(NON_DEFAULT) == set(Settings.model_fields) == set(ROUTES)
    defaults = Settings.model_construct()
    assert not [f for f, v in NON_DEFAULT.items() if getattr(defaults, f) == v]


def test_to_env_writes_one_format_that_reads_back_exactly():
    s = every_setting()
    env = s.to_env()
    assert Settings.from_env(env) == s
    assert env["FLYWHEEL_WARM_TASKS"] == "false" and env["FLYWHEEL_PREDICTION_LOG"] == "false"
    assert env["FLYWHEEL_INCLUDE_FEEDBACK"] == "true" and env["FLYWHEEL_PARALLELISM"] == "3"
    assert env["AWS_ENDPOINT_URL"] == "http://minio.other.svc:9000" and env["MODEL_VERSION"] == "v7"
    assert "FLYWHEEL_WINDOW_MINUTES" not in Settings.model_construct().to_env(), "an unset setting has no variable"


def test_a_child_sees_exactly_the_settings_not_the_parents_leftovers():
    parent = {"PATH": "/bin", "FLYWHEEL_KFP_HOST": "http://stale:8888", "FLYWHEEL_CONFIG": "/etc/other.yaml",
              "AWS_REGION": "us-west-2"}
    env = Settings.model_construct().to_env(parent)
    assert env["PATH"] == "/bin"
    assert not {"FLYWHEEL_KFP_HOST", "FLYWHEEL_CONFIG", "AWS_REGION"} & set(env)


def test_a_serving_worker_gets_the_settings_in_the_same_format(monkeypatch):
    from services.serving.launch import serve_command

    monkeypatch.setenv("FLYWHEEL_SERVING_WORKERS", "9")  # the parent's, not the settings': must not leak through
    s = every_setting().model_copy(update={"serving_workers": None})
    _, env = serve_command(s, version="v8")
    assert env["FLYWHEEL_PREDICTION_LOG"] == "false" and env["FLYWHEEL_SERVING_STRICT_FIELDS"] == "true"
    assert Settings.from_env(env) == s.model_copy(update={"serving_model_version": "v8"})
    assert env["MODEL_VERSION"] == "v8"


def test_a_bad_value_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match="setting 'min_accuracy'"):
        Settings.from_env({"FLYWHEEL_MIN_ACCURACY": "high"})


# --- the embedded runner: a kfp.local step sees every setting -----------------------------------

def test_a_kfp_local_step_sees_every_setting(tmp_path):
    from pipelines.local.runner import child_environment

    s = every_setting()
    store = str(tmp_path / "store")
    out = tmp_path / "seen.json"
    proc = subprocess.run([sys.executable, "-m", "tests.integration.settings_echo", str(tmp_path / "root"), str(out)], cwd=REPO,
                          env=child_environment(s, "run-7", store), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(out.read_text())
    assert seen == s.model_copy(update={"store": store, "run": "run-7"}).model_dump(mode="json")


# --- the cluster: the compiled pipeline and the chart's ConfigMap --------------------------------

@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return manifests(helm_render(chart_values(NON_DEFAULT)))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    from pipelines.compile import compile_pipeline
    from pipelines.training import ClusterOptions

    path = compile_pipeline(tmp_path_factory.mktemp("ir") / "p.yaml", cluster=ClusterOptions(), parallelism=3)
    ir, platform = yaml.safe_load_all(path.read_text())
    return ir, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_the_compiled_pipeline_maps_every_configmap_variable_into_every_step(compiled):
    ir, k8s = compiled
    executors = ir["deploymentSpec"]["executors"]
    assert len(executors) >= 12 and set(k8s) == set(executors)
    for name in executors:
        [mapping] = k8s[name]["configMapAsEnv"]
        assert mapping["configMapName"] == "flywheel-config" and mapping["optional"] is True
        assert [(p["configMapKey"], p["envVar"]) for p in mapping["keyToEnv"]] == [(v, v) for v in configmap_variables()]


def test_an_s3_endpoint_given_at_compile_time_replaces_the_configmaps(tmp_path):
    from pipelines.compile import compile_pipeline
    from pipelines.training import ClusterOptions

    path = compile_pipeline(tmp_path / "p.yaml", cluster=ClusterOptions(s3_endpoint_url="http://minio.kind:9000"))
    ir, platform = yaml.safe_load_all(path.read_text())
    register = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-register"]
    assert "AWS_ENDPOINT_URL" not in {p["envVar"] for p in register["configMapAsEnv"][0]["keyToEnv"]}
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://minio.kind:9000"} in ir["deploymentSpec"]["executors"]["exec-register"]["container"]["env"]


def test_the_charts_configmap_carries_every_setting_in_the_same_format(rendered):
    s = every_setting()
    expected = s.to_env()
    data = config_map(rendered)
    assert data == config_map(rendered, NON_DEFAULT["kfp_namespace"]), "the steps' namespace gets the same settings"
    assert set(data) == set(configmap_variables()), "every ConfigMap setting, and nothing else"
    for field, route in ROUTES.items():
        name = env_name(field)
        if route.where != "configmap":
            continue
        if field in CHART_DERIVED:
            assert data[name] == CHART_DERIVED[field]
            continue
        assert _read_back(field, data[name]) == NON_DEFAULT[field], field
        if not isinstance(NON_DEFAULT[field], float):  # Go prints 450.0 as 450: the same number
            assert data[name] == expected[name], f"{name}: chart {data[name]!r}, to_env {expected[name]!r}"


def test_the_serving_container_carries_its_own_settings(rendered):
    template = find(rendered, "Deployment", "flywheel-serving")["spec"]["template"]
    container = template["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # the served version: the pod's annotation (the deploy step's, or the chart's pin), read through the downward API
    [version] = [e for e in container["env"] if e["name"] == env_name("serving_model_version")]
    assert version["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.annotations['flywheel.io/model-version']"
    env[env_name("serving_model_version")] = template["metadata"]["annotations"]["flywheel.io/model-version"]
    serving = [f for f, r in ROUTES.items() if r.where == "serving"]
    assert serving and all(_read_back(f, env[env_name(f)]) == NON_DEFAULT[f] for f in serving)


def test_a_step_pod_gets_every_configmap_setting(compiled, rendered):
    """What KFP's driver puts into a step's environment: each mapped key the ConfigMap holds."""
    _, k8s = compiled
    data = config_map(rendered, NON_DEFAULT["kfp_namespace"])
    [mapping] = k8s["exec-register"]["configMapAsEnv"]
    step = Settings.from_env({p["envVar"]: data[p["configMapKey"]] for p in mapping["keyToEnv"] if p["configMapKey"] in data})
    for field, route in ROUTES.items():
        if route.where == "configmap":
            assert getattr(step, field) == CHART_DERIVED.get(field, NON_DEFAULT[field]), field


def test_the_kustomize_base_configmap_is_the_charts_default():
    assert config_map(kustomize(KUSTOMIZATIONS["kustomize-base"])) == config_map(manifests(helm_render(None)))


def test_settings_a_cluster_run_cannot_apply_are_refused_when_compiling_for_it():
    check_cluster_compile(load_settings(warm_tasks=True))  # the default, set explicitly: nothing to refuse
    with pytest.raises(ConfigError, match=r"setting 'warm_tasks' is False \(FLYWHEEL_WARM_TASKS\), which a cluster run cannot apply"):
        check_cluster_compile(load_settings(warm_tasks=False))


# --- the chart's values schema and `flywheel settings --schema` agree ---------------------------

def _shape(prop: dict) -> dict[str, Any]:
    """Types, bounds and choices of one JSON-schema property, however either schema spells them."""
    types: set[str] = set()
    shape: dict[str, Any] = {}
    for alt in prop.get("anyOf", [prop]):
        kind = alt.get("type")
        types |= set(kind if isinstance(kind, list) else [kind])
        shape |= {k: v for k, v in alt.items() if k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")}
        if "enum" in alt:
            shape["enum"] = sorted(alt["enum"])
    return {"types": types, **shape}


def test_the_charts_values_schema_agrees_with_the_settings_schema():
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "settings", "--schema"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    ours = json.loads(proc.stdout)["properties"]
    assert ours == settings_schema()["properties"] and all(ours[f]["x-env"] == env_name(f) for f in ours)
    chart = json.loads((CHART / "values.schema.json").read_text())
    checked = []
    for field, route in ROUTES.items():
        if not route.chart:
            continue
        *parents, leaf = route.chart.split(".")
        node = chart
        for key in parents:
            node = node["properties"][key]
        want, got = _shape(ours[field]), _shape(node["properties"][leaf])
        if want["types"] == {"string", "null"} and got["types"] == {"string"}:
            want["types"] = {"string"}  # the chart spells an unset string as "", which the ConfigMap leaves out
        assert got == want, f"{route.chart}: chart {got}, settings {want}"
        checked.append(field)
    assert len(checked) >= 40


def test_every_chart_config_value_is_a_setting_and_its_default_the_settings():
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(tree: dict, prefix: str) -> list[str]:
        return [p for k, v in tree.items() for p in (leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"])]

    by_chart = {r.chart: f for f, r in ROUTES.items() if r.chart}
    assert set(leaves(values["config"], "config.")) - NOT_SETTINGS <= set(by_chart)
    defaults = Settings.model_construct()
    chart_default = {f: None if _get(values, path) == "" else _get(values, path) for path, f in by_chart.items()}
    differ = {f for f, value in chart_default.items() if value != getattr(defaults, f)}
    assert differ == set(CLUSTER_DEFAULTS)


def test_flywheel_settings_prints_each_value_its_source_and_its_route(tmp_path):
    config = tmp_path / "flywheel.yaml"
    config.write_text("cv_folds: 5\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "settings"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env | {"FLYWHEEL_CONFIG": str(config), "FLYWHEEL_MIN_ACCURACY": "0.8"})
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in proc.stdout.splitlines() if line.count("│") > 4}
    assert set(rows) == set(Settings.model_fields)
    assert rows["min_accuracy"][:3] == ["0.8", "$FLYWHEEL_MIN_ACCURACY", "FLYWHEEL_MIN_ACCURACY"]
    assert rows["cv_folds"][:3] == ["5", str(config), "FLYWHEEL_CV_FOLDS"]
    assert rows["seed"][:2] == ["42", "default"]
    assert rows["min_accuracy"][3].startswith("ConfigMap flywheel-config (chart config.training.minAccuracy)")
    assert rows["serving_model_version"][2] == "MODEL_VERSION"


# --- the defect: the promotion floor set in the chart guards a cluster run's promotion -------------

@pytest.mark.slow  # a whole training run on kfp.local
def test_the_charts_promotion_floor_guards_the_monitors_retrain_on_the_cluster(s3_endpoint, tmp_path, monkeypatch):
    """Chart config.training.minAccuracy -> ConfigMap -> the monitor's settings -> the retrain the
    monitor starts on KFP -> that very package and its parameters, run on kfp.local: register
    refuses the promotion. The steps' environment carries no FLYWHEEL_MIN_ACCURACY, as before the
    fix no step pod did: only the route under test can bring the floor."""
    import boto3
    from kfp import components, local

    from components.data import DatasetSpec
    from components.registry import Registry
    from components.store import open_store
    from components.synthetic import churn
    from pipelines.local.task_server import warm_tasks
    from pipelines.triggers import KFPTrigger
    from services.monitoring.trigger import RetrainRequest
    from tests.integration.kfp_api.fake_kfp import FakeKFP

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_ENDPOINT_URL": s3_endpoint, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in [n for n in os.environ if n.startswith("FLYWHEEL_")]:
        monkeypatch.delenv(name)
    bucket = f"fw-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="flywheel/datasets/churn.csv", Body=churn(900, seed=5).to_csv(index=False).encode())

    values = {"config": {"store": f"s3://{bucket}/flywheel", "s3": {"endpointUrl": s3_endpoint},
                         "training": {"minAccuracy": 0.99, "cvFolds": 2}, "monitoring": {"includeFeedback": False}}}
    data = config_map(manifests(helm_render(values)))
    assert data["FLYWHEEL_MIN_ACCURACY"] == "0.99"
    request = RetrainRequest("demo", "20260310T110000Z", "v1", {"start": "2026-03-10T11:00:00+00:00",
                             "end": "2026-03-10T12:00:00+00:00", "key": "w"}, "drift", "demo-retrain-20260310t110000z")
    with FakeKFP() as api:
        # the monitor pod: its settings are the ConfigMap (envFrom), plus its image's own reference
        monitor = Settings.from_env(data | {"FLYWHEEL_KFP_HOST": api.url, "FLYWHEEL_COMPONENT_IMAGE": "registry.example/c:1"})
        spec = DatasetSpec("datasets/churn.csv", "churned", name="demo")
        KFPTrigger(monitor, spec, include_feedback=monitor.include_feedback, token_path=None).start(request)
        [upload] = [c for c in api.requests if c.path.endswith("/pipelines/upload")]
        [run] = [c for c in api.requests if c.path.endswith("/runs") and c.method == "POST"]
    params = run.json["runtime_config"]["parameters"]
    assert params["min_accuracy"] == 0.99 and params["cv_folds"] == 2

    package = tmp_path / "uploaded.yaml"
    package.write_bytes(upload.files["uploadfile"])
    with warm_tasks() as python:  # the embedded runner's task server: each task forked, not a new interpreter
        monkeypatch.setattr(sys, "executable", python)
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
                   raise_on_error=False)
        components.load_component_from_file(str(package))(**params)

    reg = Registry(open_store(monitor.store, monitor), "demo")
    assert reg.versions() == ["v1"]
    decision = reg.decision("v1")
    assert not decision["promoted"] and "below the floor 0.9900" in decision["reason"], decision
    assert reg.champion() is None
