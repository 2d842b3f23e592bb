"""What the observability tests read from the chart: alerting rules, dashboard queries, metric names.

The rules come from the PrometheusRule rendered by the real Helm engine (as tests/integration/k8s does);
the dashboard queries from the dashboard JSON the chart ships, with Grafana's variables
replaced by values so that Prometheus's own parser (promtool) can read them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.k8s.k8s_support import CHART, HELM_VALUE_SETS, find, helm_render, manifests, values_file

# Series the chart reads from kube-state-metrics, not from Flywheel: they are checked for
# parsing, not against the live service or the Pushgateway.
KUBE_STATE_METRICS = {"kube_deployment_status_replicas_available", "kube_deployment_spec_replicas",
                      "kube_job_status_failed", "kube_job_status_start_time"}
GRAFANA_VARIABLES = {"$namespace": "flywheel", "$model": "demo", "$__rate_interval": "5m", "$__interval": "1m"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan", "atan2"}


def binary(name: str, package: str) -> str:
    """Path of a Debian-packaged tool, or skip naming the one that is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: install the Debian package {package} (make test-tools)")
    return path


def rule_groups(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rule groups of the PrometheusRule rendered with the production values (plus ``values``)."""
    from tests.integration.k8s.k8s_support import merge

    base = values_file(HELM_VALUE_SETS["helm-production"])
    docs = manifests(helm_render(merge(base, values or {})))
    return find(docs, "PrometheusRule", "flywheel")["spec"]["groups"]


def alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def dashboard() -> dict[str, Any]:
    return json.loads((CHART / "dashboards" / "flywheel.json").read_text())


def dashboard_queries(board: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel, Grafana variables substituted."""
    out = []
    for panel in (board or dashboard())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (strings, label matchers, grouping lists and functions left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()", text):
        if m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names


def check_rules(promtool: str, groups: list[dict[str, Any]], path: Path) -> subprocess.CompletedProcess:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
