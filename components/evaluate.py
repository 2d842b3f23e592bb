"""Evaluate: holdout metrics of the challenger and the champion on the same rows."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from components.data import Schema
from components.features import xy
from components.train import PRIMARY


class ChampionError(RuntimeError):
    """The champion cannot be loaded or scored on the holdout: there is no fair comparison, so nothing is promoted."""


def score(model: Any, holdout: pd.DataFrame, schema: Schema) -> dict[str, Any]:
    """Holdout metrics of one model (classification or regression)."""
    X, y = xy(holdout, schema)
    pred = model.predict(X)
    if schema.task == "regression":
        y = y.astype(float)
        return {
            "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
            "mae": float(skm.mean_absolute_error(y, pred)),
            "r2": float(skm.r2_score(y, pred)),
            "rows": len(y),
        }
    out: dict[str, Any] = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
        "f1": float(skm.f1_score(y, pred, average="binary" if len(model.classes_) == 2 else "macro",
                                 pos_label=model.classes_[-1] if len(model.classes_) == 2 else 1)),
        "rows": len(y),
    }
    if hasattr(model, "predict_proba"):
        proba = model.predict_proba(X)
        labels = list(model.classes_)
        try:
            if len(labels) == 2:
                out["roc_auc"] = float(skm.roc_auc_score(y == labels[1], proba[:, 1]))
            else:
                out["roc_auc"] = float(skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels))
        except ValueError:  # a class absent from the holdout
            out["roc_auc"] = None
        out["log_loss"] = float(skm.log_loss(y, proba, labels=labels))
    labels = list(model.classes_)
    out["confusion_matrix"] = {
        "labels": [str(c) for c in labels],
        "matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
    }
    return out


def load_champion(load: Callable[[str], Any], version: str) -> Any:
    """The champion model, or ChampionError saying why it cannot be loaded."""
    try:
        return load(version)
    except Exception as exc:
        raise ChampionError(f"champion {version} cannot be loaded ({type(exc).__name__}: {exc}); "
                            f"the run stops and {version} stays the champion") from exc


def evaluate(challenger: Any, champion: Any | None, holdout: pd.DataFrame, schema: Schema,
             champion_version: str | None = None) -> dict[str, Any]:
    """Challenger and champion scored on the same holdout.

    A champion that cannot score the holdout raises ChampionError: a challenger is never
    promoted because the comparison could not be made.
    """
    result: dict[str, Any] = {
        "task": schema.task,
        "primary_metric": PRIMARY[schema.task],
        "challenger": score(challenger, holdout, schema),
        "champion": None,
    }
    if champion is not None:
        name = champion_version or "champion"
        try:
            result["champion"] = score(champion, holdout, schema)
        except Exception as exc:
            raise ChampionError(f"champion {name} cannot be scored on the holdout ({type(exc).__name__}: {exc}); "
                                f"the run stops and {name} stays the champion") from exc
    return result


def report_html(evaluation: dict[str, Any], title: str) -> str:
    """A small self-contained HTML report for the KFP UI and the registry."""
    def row(name: str, m: dict[str, Any] | None) -> str:
        if not m:
            return f"<tr><th>{name}</th><td colspan=9>not available</td></tr>"
        cells = "".join(f"<td>{k}: {v:.4f}</td>" for k, v in m.items() if isinstance(v, float))
        return f"<tr><th>{name}</th>{cells}</tr>"

    cm = (evaluation["challenger"] or {}).get("confusion_matrix")
    cm_html = ""
    if cm:
        head = "".join(f"<th>{html.escape(l)}</th>" for l in cm["labels"])
        body = "".join(
            f"<tr><th>{html.escape(l)}</th>{''.join(f'<td>{v}</td>' for v in r)}</tr>"
            for l, r in zip(cm["labels"], cm["matrix"], strict=True)
        )
        cm_html = f"<h2>Confusion matrix (rows: truth)</h2><table border=1><tr><th></th>{head}</tr>{body}</table>"
    return (
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Primary metric: {evaluation['primary_metric']}</p>"
        f"<table border=1>{row('challenger', evaluation['challenger'])}{row('champion', evaluation['champion'])}</table>"
        f"{cm_html}</body></html>"
    )
