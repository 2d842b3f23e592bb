"""The monitor's Prometheus metrics: built from a pass's summary, pushed to a Pushgateway.

A pass is a short-lived process, so its figures reach Prometheus through a Pushgateway,
grouped by ``job="flywheel-monitor"`` and ``model``. Every figure is computed from the
summary (``figures``), so summary.json, the terminal table and the Pushgateway say the same
thing, and a change to what a pass measures is made once, in the summary.

Counters must survive the process: the retrain decision counts are kept in the store
(``monitoring/<model>/counters.json``, see monitor.py) and retrain failures are counted from
the trigger records themselves, so each push carries the running totals.

A pass that evaluated or skipped a window replaces the model's whole group (PUT), so
figures of an earlier window never linger; a pass that failed only updates its status
families (POST), so the last good figures and ``flywheel_monitor_last_success_timestamp_seconds``
stay until the next good pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.monitoring.decision import WANTED_OUTCOMES

JOB = "flywheel-monitor"
# Per-feature series are capped so a wide table cannot flood Prometheus: the features with the
# smallest p-values (or the highest rates) are kept, the count of the rest is in summary.json.
MAX_FEATURE_SERIES = 50
STATUSES = ("ok", "skipped", "error")
# What a pass that wanted a retrain did about it (the decision counters).
DECISION_OUTCOMES = tuple(o.value for o in WANTED_OUTCOMES)
# Families a failed pass pushes (POST): everything else keeps the last good pass's values.
ERROR_FAMILIES = ("flywheel_monitor_status", "flywheel_monitor_duration_seconds",
                  "flywheel_monitor_last_run_timestamp_seconds", "flywheel_retrain_decision",
                  "flywheel_retrain_decisions_total", "flywheel_retrain_failures_total", "flywheel_retrain_in_flight")


@dataclass(frozen=True)
class Figure:
    """One sample: a metric name, its type and help, its labels and its value."""

    name: str
    kind: str  # gauge | counter
    help: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """``name{label="value",…}``, the way Prometheus shows a series."""
        if not self.labels:
            return self.name
        return self.name + "{" + ",".join(f'{k}="{v}"' for k, v in self.labels) + "}"


def figures(summary: dict[str, Any]) -> list[Figure]:
    """Every metric of a pass, from its summary (``Summary.to_dict()`` or summary.json)."""
    out: list[Figure] = []

    def add(name: str, kind: str, help_: str, value: Any, **labels: str) -> None:
        if value is None:
            return
        out.append(Figure(name, kind, help_, float(value), tuple(labels.items())))

    status = summary.get("status", "error")
    for st in STATUSES:
        add("flywheel_monitor_status", "gauge", "Outcome of the last monitoring pass (1 for its status).",
            int(st == status), status=st)
    timings = summary.get("timings") or {}
    for step in ("decision", "reports"):
        add("flywheel_monitor_duration_seconds", "gauge", "Seconds a pass spent per step (decision, reports, total).",
            timings.get(f"{step}_s"), step=step)
    add("flywheel_monitor_duration_seconds", "gauge", "Seconds a pass spent per step (decision, reports, total).",
        summary.get("duration_s"), step="total")
    add("flywheel_monitor_last_run_timestamp_seconds", "gauge", "Unix time the last pass finished.",
        summary.get("finished_at_unix"))
    if status != "error":
        add("flywheel_monitor_last_success_timestamp_seconds", "gauge",
            "Unix time the last pass that did not fail finished.", summary.get("finished_at_unix"))

    rows = summary.get("rows") or {}
    add("flywheel_monitor_window_rows", "gauge", "Prediction log rows in the window (every version).",
        rows.get("in_window"))
    add("flywheel_monitor_evaluated_rows", "gauge", "Rows of the served version evaluated by the pass.",
        rows.get("evaluated"))
    add("flywheel_monitor_labelled_rows", "gauge", "Evaluated rows with a feedback label.", rows.get("labelled"))
    _feature_rates(summary.get("columns") or {}, add)
    _drift(summary.get("drift"), add)
    _quality(summary.get("quality"), add)
    _decision(summary, add)
    return out


def _feature_rates(columns: dict[str, Any], add: Any) -> None:
    from components.data import PREDICTION

    feats = {c: v for c, v in columns.items() if c != PREDICTION}
    nulls = sorted(((v.get("null_rate"), c) for c, v in feats.items() if v.get("null_rate") is not None),
                   key=lambda t: (-t[0], t[1]))
    for rate, c in nulls[:MAX_FEATURE_SERIES]:
        add("flywheel_monitor_null_rate", "gauge", "Share of null values per feature in the window.", rate, feature=c)
    unknown = sorted(((v.get("unknown_rate"), c) for c, v in feats.items() if v.get("unknown_rate") is not None),
                     key=lambda t: (-t[0], t[1]))
    for rate, c in unknown[:MAX_FEATURE_SERIES]:
        add("flywheel_monitor_unknown_category_rate", "gauge",
            "Share of non-null values of a categorical feature that training never saw.", rate, feature=c)


def _drift(drift: dict[str, Any] | None, add: Any) -> None:
    if not drift:
        return
    add("flywheel_drift_share", "gauge", "Share of features whose drift test has p < 0.05.", drift.get("share"))
    add("flywheel_drift_share_threshold", "gauge", "The drift_share_threshold setting the pass decided with.",
        drift.get("share_threshold"))
    add("flywheel_drift_detected", "gauge", "1 when the drift rule fired (share or Bonferroni).",
        int(bool(drift.get("detected"))))
    columns = drift.get("columns") or []
    add("flywheel_drift_features_drifted", "gauge", "Features whose drift test has p < 0.05.",
        sum(bool(c.get("drifted")) for c in columns))
    for c in sorted(columns, key=lambda c: (c["p_value"], c["column"]))[:MAX_FEATURE_SERIES]:
        add("flywheel_drift_p_value", "gauge", "Drift test p-value per feature (KS or chi-square), smallest first.",
            c["p_value"], feature=c["column"], method=c["method"])
    pred = drift.get("prediction")
    if pred:
        add("flywheel_drift_prediction_p_value", "gauge", "Drift test p-value of the model's predictions.",
            pred["p_value"], method=pred["method"])


def _quality(quality: dict[str, Any] | None, add: Any) -> None:
    if not quality:
        return
    for metric, v in (quality.get("current") or {}).items():
        add("flywheel_monitor_quality", "gauge", "Model quality on the window's labelled rows.", v, metric=metric)
    for metric, v in (quality.get("holdout") or {}).items():
        if metric in (quality.get("current") or {}):
            add("flywheel_monitor_quality_holdout", "gauge", "The served version's holdout quality.", v, metric=metric)
    if quality.get("drop") is not None:
        add("flywheel_monitor_quality_drop", "gauge",
            "Drop of the primary metric against the holdout (relative increase for errors).",
            quality["drop"], metric=str(quality.get("primary_metric", "")))
    add("flywheel_monitor_quality_degraded", "gauge", "1 when the quality drop passed the threshold beyond noise.",
        int(bool(quality.get("degraded"))))


def _decision(summary: dict[str, Any], add: Any) -> None:
    decision = summary.get("decision") or {}
    add("flywheel_retrain_wanted", "gauge", "1 when the last pass wanted a retrain (drift or quality).",
        int(bool(decision.get("wanted"))))
    add("flywheel_retrain_decision", "gauge", "The last pass's decision: 1 on its outcome (triggered, or why not).",
        1, outcome=str(decision.get("outcome") or "error"))
    retrains = summary.get("retrains") or {}
    counts = retrains.get("decisions_total")
    if counts is not None:
        for outcome in DECISION_OUTCOMES:
            add("flywheel_retrain_decisions_total", "counter",
                "Passes that wanted a retrain, by what they did: " + ", ".join(DECISION_OUTCOMES) + ".",
                counts.get(outcome, 0), outcome=outcome)
    records = retrains.get("records")
    if records is not None:
        add("flywheel_retrain_failures_total", "counter", "Attempts of retrains the monitor started that failed (trigger records).",
            records.get("failed", 0))
        add("flywheel_retrain_in_flight", "gauge", "Retrains started by the monitor and not finished yet.",
            records.get("in_flight", 0))


def registry_of(figs: list[Figure], only: tuple[str, ...] | None = None) -> Any:
    """A prometheus_client registry holding the figures (``only``: these families)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    families: dict[str, Any] = {}
    for f in figs:
        if only is not None and f.name not in only:
            continue
        fam = families.get(f.name)
        if fam is None:
            names = [k for k, _ in f.labels]
            if f.kind == "counter":
                fam = CounterMetricFamily(f.name.removesuffix("_total"), f.help, labels=names)
            else:
                fam = GaugeMetricFamily(f.name, f.help, labels=names)
            families[f.name] = fam
        fam.add_metric([v for _, v in f.labels], f.value)

    class _Collector:
        def collect(self) -> Any:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return registry


def push(gateway: str, model: str, summary: dict[str, Any], timeout: float = 10.0) -> int:
    """Push a pass's figures to the Pushgateway under job and model; returns how many samples.

    Raises whatever prometheus_client raises when the gateway cannot be reached.
    """
    from prometheus_client import push_to_gateway, pushadd_to_gateway

    figs = figures(summary)
    key = {"model": model}
    if summary.get("status") == "error":
        pushadd_to_gateway(gateway, JOB, registry_of(figs, ERROR_FAMILIES), grouping_key=key, timeout=timeout)
        return sum(f.name in ERROR_FAMILIES for f in figs)
    push_to_gateway(gateway, JOB, registry_of(figs), grouping_key=key, timeout=timeout)
    return len(figs)
