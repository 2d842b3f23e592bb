"""Train: the hyper-parameter search space, one cross-validated score per candidate, refit.

The search fans out by model family (one task each, its candidates scored inside), so a
small table pays a task's start-up once per family rather than once per candidate; a runner
that runs fewer tasks at once than there are families gets them packed into as many tasks.
scikit-learn, pandas and the feature code are imported where they are used: the task that
only lists the search space starts without them.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from components.data import Schema

# The search space: model family x parameters; each entry is one fan-out task.
CLASSIFIERS: list[dict[str, Any]] = [
    {"family": "logistic", "params": {"C": 1.0}, "select": False},
    {"family": "logistic", "params": {"C": 0.1}, "select": True},
    {"family": "random_forest", "params": {"n_estimators": 150, "min_samples_leaf": 2}, "select": False},
    {"family": "hist_gradient_boosting", "params": {"learning_rate": 0.1, "max_leaf_nodes": 31}, "select": False},
    {"family": "hist_gradient_boosting", "params": {"learning_rate": 0.05, "max_leaf_nodes": 63}, "select": True},
]
REGRESSORS: list[dict[str, Any]] = [
    {"family": "linear", "params": {"alpha": 1.0}, "select": False},
    {"family": "linear", "params": {"alpha": 10.0}, "select": True},
    {"family": "random_forest", "params": {"n_estimators": 150, "min_samples_leaf": 2}, "select": False},
    {"family": "hist_gradient_boosting", "params": {"learning_rate": 0.1, "max_leaf_nodes": 31}, "select": False},
    {"family": "hist_gradient_boosting", "params": {"learning_rate": 0.05, "max_leaf_nodes": 63}, "select": True},
]
_INT_PARAMS = {"n_estimators", "min_samples_leaf", "max_leaf_nodes", "max_depth"}
PRIMARY = {"classification": "balanced_accuracy", "regression": "r2"}


def candidates(task: str) -> list[dict[str, Any]]:
    """The candidates for a task, each with a stable id."""
    space = CLASSIFIERS if task == "classification" else REGRESSORS
    return [{**c, "id": f"{i}-{c['family']}"} for i, c in enumerate(space)]


# Relative cost of cross-validating one candidate of a family (measured on the churn table): the
# weights that balance the search when it is packed into fewer tasks than there are families.
FAMILY_COST = {"logistic": 1, "linear": 1, "random_forest": 4, "hist_gradient_boosting": 4}


def families(task: str, tasks: int = 0) -> list[dict[str, Any]]:
    """The search space grouped by model family, in order: one fan-out task per family.

    With ``tasks`` > 0 and fewer than the families, the families are packed into that many
    tasks of about equal cost, the costliest first. kfp.local runs two tasks at once: a third
    would wait for a free slot and pay an interpreter's start-up again after it.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in candidates(task):
        groups.setdefault(c["family"], []).append(c)
    if not 0 < tasks < len(groups):
        return [{"family": family, "candidates": members} for family, members in groups.items()]

    def cost(members: list[dict[str, Any]]) -> int:
        return sum(FAMILY_COST.get(c["family"], 4) for c in members)

    bins: list[list[dict[str, Any]]] = [[] for _ in range(tasks)]
    for members in sorted(groups.values(), key=cost, reverse=True):  # largest first, into the lightest task
        min(bins, key=cost).extend(members)
    packed = sorted((sorted(b, key=lambda c: int(c["id"].split("-")[0])) for b in bins if b), key=cost, reverse=True)
    return [{"family": "+".join(dict.fromkeys(c["family"] for c in b)), "candidates": b} for b in packed]


def estimator(task: str, family: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression, Ridge

    # parameters may come back from JSON as floats (KFP); integers stay integers
    params = {k: int(v) if isinstance(v, float) and v.is_integer() and k in _INT_PARAMS else v for k, v in params.items()}
    if task == "classification":
        if family == "logistic":
            return LogisticRegression(max_iter=1000, class_weight="balanced", **params)
        if family == "random_forest":
            return RandomForestClassifier(random_state=seed, n_jobs=1, class_weight="balanced", max_features="sqrt", **params)
        if family == "hist_gradient_boosting":
            return HistGradientBoostingClassifier(random_state=seed, class_weight="balanced", **params)
    else:
        if family == "linear":
            return Ridge(**params)
        if family == "random_forest":
            return RandomForestRegressor(random_state=seed, n_jobs=1, max_features=0.5, **params)
        if family == "hist_gradient_boosting":
            return HistGradientBoostingRegressor(random_state=seed, **params)
    raise ValueError(f"unknown model family {family!r} for {task}")


def make_model(schema: Schema, candidate: dict[str, Any], seed: int) -> Pipeline:
    from components.features import build

    est = estimator(schema.task, candidate["family"], candidate["params"], seed)
    return build(schema, est, candidate.get("select", False), seed)


def _cv(schema: Schema, folds: int, seed: int) -> Any:
    from sklearn.model_selection import KFold, StratifiedKFold, TimeSeriesSplit

    if schema.timestamp:
        return TimeSeriesSplit(n_splits=folds)
    if schema.task == "classification":
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return KFold(n_splits=folds, shuffle=True, random_state=seed)


def sample_rows(train: pd.DataFrame, schema: Schema, max_rows: int, seed: int) -> pd.DataFrame:
    """At most ``max_rows`` training rows for the search (time order kept)."""
    if len(train) <= max_rows:
        return train
    return train.sample(n=max_rows, random_state=seed).sort_index()


def score_candidate(
    train: pd.DataFrame, schema: Schema, candidate: dict[str, Any], folds: int, seed: int, max_rows: int
) -> dict[str, Any]:
    """Cross-validated primary metric of one candidate on the training rows."""
    import numpy as np
    from sklearn.model_selection import cross_val_score

    from components.features import xy

    rows = sample_rows(train, schema, max_rows, seed)
    X, y = xy(rows, schema)
    start = time.perf_counter()
    scores = cross_val_score(
        make_model(schema, candidate, seed), X, y, cv=_cv(schema, folds, seed),
        scoring=PRIMARY[schema.task], error_score="raise",
    )
    return {
        "candidate": candidate,
        "metric": PRIMARY[schema.task],
        "score": float(np.mean(scores)),
        "std": float(np.std(scores)),
        "folds": folds,
        "rows": len(rows),
        "seconds": round(time.perf_counter() - start, 3),
    }


def score_family(
    train: pd.DataFrame, schema: Schema, family: dict[str, Any], folds: int, seed: int, max_rows: int
) -> list[dict[str, Any]]:
    """Cross-validated scores of every candidate of one family (one fan-out task)."""
    return [score_candidate(train, schema, c, folds, seed, max_rows) for c in family["candidates"]]


def best(results: list[dict[str, Any] | list[dict[str, Any]] | str]) -> dict[str, Any]:
    """The highest cross-validated score (ties: the simpler, earlier candidate).

    ``results`` holds candidate results, or lists of them (one per family task), or their JSON.
    """
    parsed: list[dict[str, Any]] = []
    for r in results:
        r = json.loads(r) if isinstance(r, str) else r
        parsed.extend(r if isinstance(r, list) else [r])
    if not parsed:
        raise ValueError("no candidate was scored")
    return max(parsed, key=lambda r: (round(r["score"], 6), -int(r["candidate"]["id"].split("-")[0])))


def refit(train: pd.DataFrame, schema: Schema, candidate: dict[str, Any], seed: int) -> Pipeline:
    """Fit the chosen candidate on all training rows."""
    from components.features import xy

    X, y = xy(train, schema)
    return make_model(schema, candidate, seed).fit(X, y)
