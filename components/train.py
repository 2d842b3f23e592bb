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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from components.data import Schema

# The families registry: each model family and the tasks it has an estimator for (``estimator``).
# The search space (components/search_space.yaml) is checked against it.
FAMILY_TASKS: dict[str, tuple[str, ...]] = {
    "logistic": ("classification",),
    "linear": ("regression",),
    "random_forest": ("classification", "regression"),
    "hist_gradient_boosting": ("classification", "regression"),
}
_INT_PARAMS = {"n_estimators", "min_samples_leaf", "max_leaf_nodes", "max_depth", "max_iter"}
PRIMARY = {"classification": "balanced_accuracy", "regression": "r2"}


def family_tasks(family: str) -> tuple[str, ...]:
    """The tasks a model family can train (empty: this build has no such family)."""
    return FAMILY_TASKS.get(family, ())


def known_families() -> list[str]:
    """Every model family of this build."""
    return list(FAMILY_TASKS)


def parameter_names(family: str, task: str) -> set[str]:
    """The parameters a family's estimator for ``task`` takes (scikit-learn's ``get_params``): what a search space may name."""
    return set(estimator(task, family, {}, 0).get_params(deep=False))


def candidates(task: str, space: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The default points of the search space for a task, each a candidate with a stable id (``<n>-<family>``)."""
    from components import search_space

    chosen = search_space.for_task(space or search_space.default(), task, user=space is not None)
    points = [(family, point) for family, body in chosen.items() for point in body["defaults"][task]]
    return [{"id": f"{i}-{family}", "family": family, "select": bool(point.get(search_space.SELECT, False)),
             "params": {k: v for k, v in point.items() if k != search_space.SELECT}}
            for i, (family, point) in enumerate(points)]


# Relative cost of cross-validating one candidate of a family (measured on the churn table): the
# weights that balance the search when it is packed into fewer tasks than there are families.
FAMILY_COST = {"logistic": 1, "linear": 1, "random_forest": 4, "hist_gradient_boosting": 4}


def families(task: str, tasks: int = 0, space: dict[str, Any] | None = None,
             budget: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The search grouped by model family, in order: one fan-out task per family.

    Each group carries its families' spaces (``spaces``), its default candidates and the search
    budget (``budget``: components/tune.py). With ``tasks`` > 0 and fewer than the families, the
    families are packed into that many tasks of about equal cost, the costliest first. kfp.local
    runs two tasks at once: a third would wait for a free slot and pay an interpreter's start-up
    again after it.
    """
    from components import search_space

    chosen = search_space.for_task(space or search_space.default(), task, user=space is not None)
    groups: dict[str, list[dict[str, Any]]] = {family: [] for family in chosen}
    for c in candidates(task, space):
        groups[c["family"]].append(c)

    def group(members: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
        return {"family": "+".join(names), "candidates": members, "spaces": {f: chosen[f] for f in names},
                "budget": budget or {}}

    if not 0 < tasks < len(groups):
        return [group(members, [family]) for family, members in groups.items()]

    def cost(names: list[str]) -> int:
        # a family searched beyond its defaults costs its trials; with only defaults, its defaults
        n = lambda f: max(len(groups[f]), 1)  # noqa: E731
        return sum(FAMILY_COST.get(f, 4) * n(f) for f in names)

    bins: list[list[str]] = [[] for _ in range(tasks)]
    for family in sorted(groups, key=lambda f: cost([f]), reverse=True):  # largest first, into the lightest task
        min(bins, key=cost).append(family)
    order = list(groups)
    packed = sorted((sorted(b, key=order.index) for b in bins if b), key=cost, reverse=True)
    return [group([c for f in names for c in groups[f]], names) for names in packed]


def estimator(task: str, family: str, params: dict[str, Any], seed: int) -> Any:
    """The scikit-learn estimator of a model family for a task (the families registry: FAMILY_TASKS)."""
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression, Ridge

    # parameters may come back from JSON as floats (KFP); integers stay integers. The search space's
    # parameters override the family's own choices below (class weights, max_features), never collide.
    params = {k: int(v) if isinstance(v, float) and v.is_integer() and k in _INT_PARAMS else v for k, v in params.items()}
    if task == "classification":
        if family == "logistic":
            return LogisticRegression(**{"max_iter": 1000, "class_weight": "balanced", **params})
        if family == "random_forest":
            return RandomForestClassifier(**{"random_state": seed, "n_jobs": 1, "class_weight": "balanced", "max_features": "sqrt", **params})
        if family == "hist_gradient_boosting":
            return HistGradientBoostingClassifier(**{"random_state": seed, "class_weight": "balanced", **params})
    else:
        if family == "linear":
            return Ridge(**params)
        if family == "random_forest":
            return RandomForestRegressor(**{"random_state": seed, "n_jobs": 1, "max_features": 0.5, **params})
        if family == "hist_gradient_boosting":
            return HistGradientBoostingRegressor(**{"random_state": seed, **params})
    raise ValueError(f"unknown model family {family!r} for {task}")


def make_model(schema: Schema, candidate: dict[str, Any], seed: int) -> Pipeline:
    from components.features import build

    est = estimator(schema.task, candidate["family"], candidate["params"], seed)
    return build(schema, est, candidate.get("select", False), seed)


def _cv(schema: Schema, n: int, folds: int, seed: int) -> Any:
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
    train: pd.DataFrame, schema: Schema, candidate: dict[str, Any], folds: int, seed: int, max_rows: int,
    after_fold: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Cross-validated primary metric of one candidate on the training rows.

    The folds run one after another (as ``cross_val_score`` runs them, with the same scores);
    ``after_fold(k, mean of the first k folds)`` is called after each, and may raise to stop
    the candidate there (pruning, components/tune.py).
    """
    import numpy as np
    from sklearn.base import clone
    from sklearn.metrics import get_scorer

    from components.features import xy

    rows = sample_rows(train, schema, max_rows, seed)
    X, y = xy(rows, schema)
    start = time.perf_counter()
    model, scorer, scores = make_model(schema, candidate, seed), get_scorer(PRIMARY[schema.task]), []
    for fit_rows, test_rows in _cv(schema, len(rows), folds, seed).split(X, y):
        fitted = clone(model).fit(X.iloc[fit_rows], y.iloc[fit_rows])
        scores.append(float(scorer(fitted, X.iloc[test_rows], y.iloc[test_rows])))
        if after_fold:
            after_fold(len(scores), float(np.mean(scores)))
    return {
        "candidate": candidate,
        "metric": PRIMARY[schema.task],
        "score": float(np.mean(scores)),
        "std": float(np.std(scores)),
        "folds": folds,
        "rows": len(rows),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _rank(candidate_id: str) -> int:
    """Order of a candidate among ties: the defaults (``<n>-<family>``) in order, then the champion's point
    (``<family>-champion``), then sampled trials (``<family>-<trial number>``) in order."""
    head, _, tail = candidate_id.partition("-")
    if head.isdigit():
        return int(head)
    return 10**6 + (int(tail) if tail.isdigit() else -1)


def trials_of(results: list[dict[str, Any] | list[dict[str, Any]] | str]) -> list[dict[str, Any]]:
    """Every trial record in ``results``: records, lists of them (one per family task), or their JSON."""
    parsed: list[dict[str, Any]] = []
    for r in results:
        r = json.loads(r) if isinstance(r, str) else r
        parsed.extend(r if isinstance(r, list) else [r])
    return parsed


def best(results: list[dict[str, Any] | list[dict[str, Any]] | str]) -> dict[str, Any]:
    """The highest cross-validated score among the trials scored on every fold (ties: the simpler, earlier candidate).

    ``results`` holds candidate results, or lists of them (one per family task), or their JSON;
    pruned and failed trials (``state``) are never chosen.
    """
    parsed = trials_of(results)
    complete = [r for r in parsed if r.get("state", "complete") == "complete"]
    if not complete:
        failed = [f"{r['candidate']['id']}: {r['error']}" for r in parsed if r.get("state") == "failed"][:3]
        raise ValueError("no candidate was scored" + (f" (every trial failed; first: {'; '.join(failed)})" if failed else ""))
    return max(complete, key=lambda r: (round(r["score"], 6), -_rank(r["candidate"]["id"])))


def refit(train: pd.DataFrame, schema: Schema, candidate: dict[str, Any], seed: int) -> Pipeline:
    """Fit the chosen candidate on all training rows."""
    from components.features import xy

    X, y = xy(train, schema)
    return make_model(schema, candidate, seed).fit(X, y)
