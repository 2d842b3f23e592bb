"""Model quality on the window's labelled rows, compared with the version's holdout quality."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

# Metrics where lower is better are compared by relative increase; bounded scores
# (accuracy-like, R2) by absolute drop, so a 0.05 threshold means 5 points either way.
LOWER_IS_BETTER = {"rmse", "mae", "log_loss"}
# Below this many labelled rows the standard error of accuracy (~0.5/sqrt(n)) is too close
# to a 0.05 threshold for the comparison to mean anything.
MIN_LABELLED_ROWS = 200


def quality_metrics(task: str, y_true: pd.Series, y_pred: pd.Series, classes: list[Any] | None = None) -> dict[str, float]:
    """The holdout metrics the evaluate stage computes, from labels and predictions alone."""
    if task == "regression":
        y, p = y_true.astype(float).to_numpy(), y_pred.astype(float).to_numpy()
        return {"rmse": float(np.sqrt(skm.mean_squared_error(y, p))), "mae": float(skm.mean_absolute_error(y, p)),
                "r2": float(skm.r2_score(y, p))}
    y, p = y_true.astype(str).to_numpy(), y_pred.astype(str).to_numpy()
    labels = [str(c) for c in classes] if classes else sorted(set(y) | set(p))
    binary = len(labels) == 2
    return {
        "accuracy": float(skm.accuracy_score(y, p)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, p)),
        "f1": float(skm.f1_score(y, p, average="binary" if binary else "macro", pos_label=labels[-1] if binary else 1,
                                 labels=None if binary else labels, zero_division=0)),
    }


def compare_quality(
    task: str, labelled: pd.DataFrame, label: str, prediction: str, holdout: dict[str, Any], primary: str,
    threshold: float, labelled_rows: int, classes: list[Any] | None = None,
) -> dict[str, Any]:
    """Current metrics, holdout metrics, the drop of the primary metric and whether it passes the threshold."""
    out: dict[str, Any] = {"labelled_rows": labelled_rows, "rows_scored": len(labelled), "primary_metric": primary,
                           "holdout": {k: v for k, v in holdout.items() if isinstance(v, int | float)},
                           "current": None, "drop": None, "threshold": threshold, "degraded": False}
    if len(labelled) < MIN_LABELLED_ROWS:
        out["reason"] = f"{len(labelled)} labelled rows (< {MIN_LABELLED_ROWS}): quality not compared"
        return out
    current = quality_metrics(task, labelled[label], labelled[prediction], classes)
    out["current"] = current
    base = holdout.get(primary)
    if primary not in current or base is None:
        out["reason"] = f"holdout has no {primary!r} to compare with"
        return out
    if primary in LOWER_IS_BETTER:
        drop = (current[primary] - base) / abs(base) if base else 0.0
        how = "relative increase"
    else:
        drop = base - current[primary]
        how = "drop"
    out["drop"] = float(drop)
    se = _drop_standard_error(primary, base, len(labelled), holdout.get("rows"))
    out["drop_se"] = se
    # past the threshold, and more than sampling noise: two standard errors of the difference
    noise = se is not None and drop <= NOISE_Z * se
    out["degraded"] = bool(drop > threshold and not noise)
    verdict = ">" if drop > threshold else "<="
    out["reason"] = (f"{primary} {current[primary]:.4f} on {len(labelled)} labelled rows vs holdout {base:.4f}: "
                     f"{how} {drop:.4f} {verdict} quality_drop_threshold {threshold}"
                     + (f", but within {NOISE_Z:g} standard errors ({se:.4f}) of noise" if noise and drop > threshold else ""))
    return out


NOISE_Z = 2.0
_PROPORTIONS = {"accuracy", "balanced_accuracy", "f1"}


def _drop_standard_error(primary: str, base: float, n_window: int, n_holdout: Any) -> float | None:
    """Standard error of (holdout - window) for proportion-like metrics; None where no simple one exists."""
    if primary not in _PROPORTIONS or not n_window:
        return None
    p = min(max(float(base), 0.01), 0.99)
    var = p * (1 - p) / n_window + (p * (1 - p) / int(n_holdout) if n_holdout else 0.0)
    return float(np.sqrt(var))
