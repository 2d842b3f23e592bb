"""Every metric the chart's rules and dashboard name is seen live, and the monitor's figures reach a Pushgateway.

Given the real service (`bentoml serve` on loopback) answering predictions, bad input and
feedback, a real Pushgateway on loopback, and a real `flywheel monitor` pass with
``pushgateway`` set over the logs the service wrote, when the names in the rendered
PrometheusRule and the dashboard are collected, then each one is exposed by the service's
/metrics or by the Pushgateway (kube-state-metrics series aside). A renamed metric breaks this.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from components.data import REQUEST_ID
from components.registry import Registry
from components.store import LocalStore
from services.monitoring import metrics as monitor_metrics
from services.monitoring.monitor import run_pass
from testkit.models import LOGISTIC, add_version, wine_frame
from testkit.server import Server, serving_settings
from tests.integration.observability.live import Pushgateway, sample_names, samples, series_key
from tests.integration.observability.promql import (
    KUBE_STATE_METRICS,
    alerts,
    binary,
    dashboard_queries,
    metric_names,
    rule_groups,
)

MODEL = "wine"
FLYWHEEL = str(Path(sys.executable).parent / "flywheel")


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in frame.drop(columns=["target"]).to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and np.isnan(v) else v.isoformat() if isinstance(v, pd.Timestamp) else v)
                    for k, v in row.items()})
    return out


def _wait_for(keys_under: str, store: LocalStore, ids: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen: set[str] = set()
        for k in store.list(keys_under):
            if k.endswith(".parquet"):
                seen |= set(pd.read_parquet(store.url(k), columns=[REQUEST_ID])[REQUEST_ID])
        if ids <= seen:
            return
        time.sleep(0.5)
    raise AssertionError(f"records under {keys_under} did not reach the store in {timeout}s")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Serve, exercise every API, run `flywheel monitor` with a Pushgateway; yield what each exposed."""
    gateway_bin = binary("prometheus-pushgateway", "prometheus-pushgateway")
    tmp = tmp_path_factory.mktemp("live")
    store_dir = tmp / "store"
    store = LocalStore(store_dir)
    frame = wine_frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(Registry(store, MODEL), frame, "target", LOGISTIC, metrics={
            "task": "classification", "primary_metric": "balanced_accuracy",
            "holdout": {"balanced_accuracy": 0.95, "accuracy": 0.95, "f1": 0.95, "rows": 45}})
    gateway = Pushgateway(gateway_bin, tmp / "pushgateway.log").start()
    server = Server(serving_settings(store_dir, MODEL, tmp), tmp / "server.log")
    try:
        server.start()
        rows = frame.sample(n=300, replace=True, random_state=0).reset_index(drop=True)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            answer = client.post("/predict_many", json={"records": _records(rows)})
            assert answer.status_code == 200, answer.text
            ids = answer.json()["request_ids"]
            one = _records(rows.head(1))[0]
            client.post("/predict", json={"records": [one]})
            client.post("/predict", json={"records": [{**one, "region": "atlantis"}]})  # unknown category
            client.post("/predict", json={"records": [{**one, "magnesium": None}]})  # a null
            client.post("/predict", json={"records": [{**one, "magnesium": 1e6}]})  # outside the training range
            client.post("/predict", json={"records": [{**one, "comment": "not a feature"}]})  # an ignored field
            assert client.post("/predict", json={"records": [{**one, "alcohol": "x"}]}).status_code == 400
            for request_id, label in zip(ids, rows["target"], strict=True):
                assert client.post("/feedback", json={"request_id": request_id, "label": label}).status_code == 200
            client.post("/feedback", json={"request_id": "never-served", "label": "class_0"})
            assert client.post("/feedback", json={"request_id": ids[0], "label": "class_9"}).status_code == 400
            _wait_for(f"predictions/{MODEL}/", store, set(ids))
            _wait_for(f"feedback/{MODEL}/", store, set(ids))
            service_text = client.get("/metrics").text
        env = {**os.environ, "FLYWHEEL_PUSHGATEWAY": gateway.url, "FLYWHEEL_MIN_ROWS": "100",
               "FLYWHEEL_MONITOR_REPORTS": "never", "FLYWHEEL_EVIDENTLY_WORKSPACE": str(tmp / "evidently"),
               "FLYWHEEL_COOLDOWN_MINUTES": "0"}
        env.pop("FLYWHEEL_CONFIG", None)
        cli = subprocess.run([FLYWHEEL, "monitor", "--model", MODEL, "--store", str(store_dir)], env=env,
                             capture_output=True, text=True, timeout=600, check=False)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        key = next(k for k in store.list(f"monitoring/{MODEL}/") if k.endswith("summary.json"))
        summary = json.loads(store.read(key))
        yield {"service": service_text, "gateway": httpx.get(f"{gateway.url}/metrics", timeout=10).text,
               "summary": summary, "cli": cli.stdout, "store": store_dir, "tmp": tmp}
    finally:
        server.stop()
        gateway.stop()


def test_the_monitors_figures_are_in_the_pushgateway_after_flywheel_monitor(live: dict[str, Any]) -> None:
    summary = live["summary"]
    assert summary["status"] == "ok", summary["message"]
    assert summary["outputs"]["pushgateway"].startswith("http://127.0.0.1:")
    pushed = samples(live["gateway"])
    figures = monitor_metrics.figures(summary)
    assert {f.name for f in figures} >= {
        "flywheel_drift_share", "flywheel_drift_p_value", "flywheel_monitor_window_rows", "flywheel_monitor_null_rate",
        "flywheel_monitor_unknown_category_rate", "flywheel_monitor_quality", "flywheel_monitor_quality_drop",
        "flywheel_retrain_decision", "flywheel_retrain_decisions_total", "flywheel_monitor_duration_seconds",
        "flywheel_monitor_last_success_timestamp_seconds"}
    for f in figures:
        key = series_key(f.name, {**dict(f.labels), "job": "flywheel-monitor", "model": MODEL, "instance": ""})
        assert key in pushed, f"{key} not in the Pushgateway"
        assert pushed[key] == pytest.approx(f.value), key
        assert summary["metrics"][f.key] == pytest.approx(f.value)  # summary.json says the same
    # the unknown category and the null sent to the service show in the window's rates
    assert summary["metrics"]['flywheel_monitor_unknown_category_rate{feature="region"}'] > 0
    assert summary["metrics"]['flywheel_monitor_null_rate{feature="magnesium"}'] > 0
    # `flywheel monitor` prints them
    assert "flywheel_drift_share " in live["cli"] and "pushed to http://127.0.0.1:" in live["cli"]


def test_every_metric_in_the_rules_and_the_dashboard_is_exposed_live(live: dict[str, Any]) -> None:
    used: dict[str, set[str]] = {}
    for name, rule in alerts(rule_groups()).items():
        for m in metric_names(rule["expr"]):
            used.setdefault(m, set()).add(f"alert {name}")
    for title, query in dashboard_queries():
        for m in metric_names(query):
            used.setdefault(m, set()).add(f"panel {title!r}")
    exposed = sample_names(live["service"]) | sample_names(live["gateway"])
    missing = {m: sorted(where) for m, where in used.items() if m not in exposed and m not in KUBE_STATE_METRICS}
    assert not missing, "named in rules/dashboard but exposed by neither the service nor the Pushgateway:\n" + "\n".join(
        f"  {m}: {', '.join(w)}" for m, w in sorted(missing.items()))


def test_a_failed_pass_updates_its_status_and_keeps_the_last_good_figures(live: dict[str, Any], tmp_path: Path) -> None:
    gateway = Pushgateway(binary("prometheus-pushgateway", "prometheus-pushgateway"), tmp_path / "pg.log").start()
    try:
        monitor_metrics.push(gateway.url, MODEL, live["summary"])
        broken = tmp_path / "store"
        shutil.copytree(live["store"], broken)
        for ref in broken.glob(f"registry/{MODEL}/versions/*/reference.parquet"):
            ref.unlink()
        settings = serving_settings(broken, MODEL, tmp_path, pushgateway=gateway.url, min_rows=100)
        s = run_pass(settings, LocalStore(broken), None)
        assert s.status == "error" and "reference.parquet" in s.message
        pushed = gateway.samples()
        labels = {"job": "flywheel-monitor", "model": MODEL, "instance": ""}
        assert pushed[series_key("flywheel_monitor_status", {**labels, "status": "error"})] == 1
        assert pushed[series_key("flywheel_monitor_status", {**labels, "status": "ok"})] == 0
        assert pushed[series_key("flywheel_retrain_decision", {**labels, "outcome": "error"})] == 1
        good = live["summary"]["metrics"]
        assert pushed[series_key("flywheel_drift_share", labels)] == pytest.approx(good["flywheel_drift_share"])
        assert pushed[series_key("flywheel_monitor_last_success_timestamp_seconds", labels)] == pytest.approx(
            good["flywheel_monitor_last_success_timestamp_seconds"])
    finally:
        gateway.stop()
