"""The Evidently 0.7 reports of a pass and their snapshots in the Evidently workspace.

Evidently runs on the bounded sample, never on the window: its cost grows with rows
(its plain DataDriftPreset took ~130 s on 1M x 20 here) and a sample answers the drift
question with power to spare (see drift.py). The drift report is not the plain preset:
DataDriftPreset computes each column's test three times (per-column metric, drift count,
and again for its HTML table), so the report lists ``DriftedColumnsCount`` and one
``ValueDrift`` per column, with the method and threshold the decision used, and shows
the very p-values the decision read.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pandas as pd

from components.data import LABEL, PREDICTION, Schema
from components.settings import Settings
from services.monitoring import drift

log = logging.getLogger(__name__)


def _evidently():
    import evidently

    return evidently


def register_chi2_homogeneity(enabled: bool) -> bool:
    """Make the decision's categorical test available to Evidently as ``chi2_homogeneity`` (once per process).

    Through Evidently's legacy stat-test registry, checked first (components/compat.py): raises
    CompatError when it no longer works as relied on. False, changing nothing, when switched off
    (``report_chi2_homogeneity``): the report then uses Evidently's own chi-square.
    """
    from components.compat import register_stat_test

    return register_stat_test("chi2_homogeneity", drift.METHOD_NAMES["chi2_homogeneity"],
                              lambda reference, current: drift.chi2_homogeneity(reference, current)[1],
                              drift.COLUMN_ALPHA, enabled)


def check_at_start_up(settings: Settings) -> None:
    """For a process that runs passes: what its reports rely on in Evidently is checked now, not at the first report."""
    if settings.monitor_reports != "never":
        register_chi2_homogeneity(settings.report_chi2_homogeneity)


def report_method(kind: str, homogeneity: bool) -> str:
    """The method a report column gets: the decision's, or Evidently's own chi-square when ours is not registered."""
    method = drift.method_for(kind)
    return "chisquare" if method == "chi2_homogeneity" and not homogeneity else method


def _definition(frame: pd.DataFrame, kinds: dict[str, str], extra: dict[str, Any] | None = None):
    ev = _evidently()
    num = [c for c, k in kinds.items() if k == "numeric" and c in frame]
    cat = [c for c, k in kinds.items() if k in ("categorical", "boolean") and c in frame]
    dates = [c for c, k in kinds.items() if k == "datetime" and c in frame]
    return ev.DataDefinition(numerical_columns=num, categorical_columns=cat, datetime_columns=dates, **(extra or {}))


def _categorical_as_str(frame: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    out = frame.copy()
    for c, k in kinds.items():
        if k in ("categorical", "boolean") and c in out:
            out[c] = out[c].astype("string")
    return out


def drift_report(reference: pd.DataFrame, sample: pd.DataFrame, schema: Schema, share_threshold: float,
                 timestamp: dt.datetime, name: str, homogeneity: bool = True):
    """Data drift per feature and prediction drift, each with the decision's method.

    ``homogeneity`` (the setting ``report_chi2_homogeneity``) false: categorical columns show
    Evidently's own chi-square instead of the decision's test.
    """
    ev = _evidently()
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    homogeneity = register_chi2_homogeneity(homogeneity)
    kinds = {c.name: c.kind for c in schema.features}
    pred_kind = "numeric" if schema.task == "regression" else "categorical"
    kinds_all = {**kinds, PREDICTION: pred_kind}
    tested = [c for c, k in kinds.items() if k != "datetime"]
    methods = {c: report_method(kinds_all[c], homogeneity) for c in [*tested, PREDICTION]}
    metrics = [DriftedColumnsCount(columns=tested, drift_share=share_threshold,
                                   per_column_method={c: methods[c] for c in tested}, threshold=drift.COLUMN_ALPHA)]
    metrics += [ValueDrift(column=c, method=methods[c], threshold=drift.COLUMN_ALPHA) for c in [*tested, PREDICTION]]
    cols = [*kinds, PREDICTION]
    ref = _categorical_as_str(reference[cols], kinds_all)
    cur = _categorical_as_str(sample[cols], kinds_all)
    definition = _definition(cur, kinds_all)
    report = ev.Report(metrics, include_tests=False)
    return report.run(ev.Dataset.from_pandas(cur, data_definition=definition),
                      ev.Dataset.from_pandas(ref, data_definition=definition), timestamp=timestamp, name=name)


def quality_report(reference: pd.DataFrame, labelled: pd.DataFrame, schema: Schema, timestamp: dt.datetime, name: str):
    """Classification or regression quality on the labelled rows, the reference alongside."""
    ev = _evidently()
    from evidently.presets import ClassificationPreset, RegressionPreset

    cols = [PREDICTION, LABEL]
    cur, ref = labelled[cols].copy(), reference[cols].copy()
    if schema.task == "regression":
        extra = {"regression": [ev.Regression(target=LABEL, prediction=PREDICTION)]}
        preset = RegressionPreset()
        cur, ref = cur.astype(float), ref.astype(float)
    else:
        cur, ref = cur.astype(str), ref.astype(str)
        classes = sorted(set(ref[LABEL]) | set(cur[LABEL]) | set(cur[PREDICTION]))
        kind = ev.BinaryClassification if len(classes) == 2 else ev.MulticlassClassification
        args = {"target": LABEL, "prediction_labels": PREDICTION}
        if kind is ev.BinaryClassification:
            args["pos_label"] = classes[-1]
        extra = {"classification": [kind(**args)]}
        preset = ClassificationPreset()
    definition = ev.DataDefinition(categorical_columns=cols if schema.task != "regression" else [], **extra)
    report = ev.Report([preset], include_tests=False)
    return report.run(ev.Dataset.from_pandas(cur, data_definition=definition),
                      ev.Dataset.from_pandas(ref, data_definition=definition), timestamp=timestamp, name=name)


def add_to_workspace(path: str, model: str, snapshots: list[Any]) -> list[str]:
    """Add the pass's snapshots to the local Evidently workspace (one project per model)."""
    from evidently.ui.workspace import Workspace

    ws = Workspace(path)
    name = f"flywheel-{model}"
    found = ws.search_project(name)
    project = found[0] if found else ws.create_project(name, description=f"Flywheel monitoring of model {model}")
    return [str(ws.add_run(project.id, s, include_data=False).id) for s in snapshots]
