"""Train: the hyper-parameter search space, one cross-validated score per candidate, refit.

The search fans out by model family (one task each, its candidates scored inside), so a
small table pays a task's start-up once per family rather than once per candidate; a runner
that runs fewer tasks at once than there are families gets them packed into as many tasks.
scikit-learn, pandas and the feature code are imported where they are used: the task that
only lists the search space starts without them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from components.data import Schema

@dataclass(frozen=True)
class Family:
    """One model family: what it is called, the tasks it serves, how its estimator is made and
    from which parameters, and what its candidates cost. Data, so a search space can be laid over it.

    ``factory(task, params, seed, schema)`` returns the estimator; ``native`` families (the
    gradient-boosted libraries) get numbers as they are and categories as codes
    (``features.build_native``), the others the imputing, scaling, one-hot pipeline
    (``features.build``).
    """

    name: str
    tasks: tuple[str, ...]
    factory: Callable[[str, dict[str, Any], int, Schema], Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    native: bool = False
    cost: int = 4  # relative cost of cross-validating one candidate (measured on the churn table)


def _logistic(task: str, params: dict[str, Any], seed: int, schema: Schema) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(**params)


def _linear(task: str, params: dict[str, Any], seed: int, schema: Schema) -> Any:
    from sklearn.linear_model import Ridge

    return Ridge(**params)


def _random_forest(task: str, params: dict[str, Any], seed: int, schema: Schema) -> Any:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    if task == "classification":
        return RandomForestClassifier(random_state=seed, n_jobs=1, **params)
    return RandomForestRegressor(random_state=seed, n_jobs=1, **params)


def _hist_gradient_boosting(task: str, params: dict[str, Any], seed: int, schema: Schema) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    cls = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor
    return cls(random_state=seed, **params)


def _xgboost(task: str, params: dict[str, Any], seed: int, schema: Schema) -> Any:
    from components import gbt
    from components.features import native_feature_types

    return gbt.xgboost_estimator(task, params, seed, native_feature_types(schema), len(schema.classes or []) or 2)


def _lightgbm(task: str, params: dict[str, Any], seed: int, schema: Schema) -> Any:
    from components import gbt
    from components.features import native_feature_types

    categorical = [i for i, t in enumerate(native_feature_types(schema)) if t == "c"]
    return gbt.lightgbm_estimator(task, params, seed, categorical)


BOTH = ("classification", "regression")
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("logistic", ("classification",), _logistic, {"max_iter": 1000, "class_weight": "balanced"}, cost=1),
    Family("linear", ("regression",), _linear, cost=1),
    Family("random_forest", BOTH, _random_forest, cost=4),
    Family("hist_gradient_boosting", BOTH, _hist_gradient_boosting, cost=4),
    Family("xgboost", BOTH, _xgboost, {"learning_rate": 0.1, "max_depth": 6, "min_child_weight": 1.0}, native=True, cost=3),
    Family("lightgbm", BOTH, _lightgbm, {"learning_rate": 0.05, "num_leaves": 31, "min_child_samples": 20},
           native=True, cost=3),
)}
# Per-task defaults a family adds to its own (what differs between classifier and regressor).
TASK_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("random_forest", "classification"): {"class_weight": "balanced", "max_features": "sqrt"},
    ("random_forest", "regression"): {"max_features": 0.5},
    ("hist_gradient_boosting", "classification"): {"class_weight": "balanced"},
}

_INT_PARAMS = {"n_estimators", "min_samples_leaf", "max_leaf_nodes", "max_depth", "num_leaves", "min_child_samples",
               "max_bin", "max_cat_to_onehot"}
PRIMARY = {"classification": "balanced_accuracy", "regression": "r2"}
# A trial's ``origin`` when it is a fixed point (the one-standard-error rule's incumbents, see ``best``): a
# family's default, the champion's best point. The others were proposed: by the sampler, or the champion's
# next-best trials proposed again on a warm start (components/tune.py ``warm_order``).
FIXED = ("default", "warm")


def family_tasks(family: str) -> tuple[str, ...]:
    """The tasks a model family can train (empty: this build has no such family)."""
    found = FAMILIES.get(family)
    return found.tasks if found else ()


def known_families() -> list[str]:
    """Every model family of this build."""
    return list(FAMILIES)


def parameter_names(family: str, task: str) -> set[str]:
    """The parameters a family's estimator for ``task`` takes (scikit-learn's ``get_params``): what a search space may name."""
    from components.data import Schema

    no_columns = Schema(target="", task=task, features=[], classes=[0, 1] if task == "classification" else None)  # type: ignore[arg-type]
    return set(estimator(task, family, {}, 0, no_columns).get_params(deep=False))


def candidates(task: str, space: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The default points of the search space for a task, each a candidate with a stable id (``<n>-<family>``)."""
    from components import search_space

    chosen = search_space.for_task(space or search_space.default(), task, user=space is not None)
    points = [(family, point) for family, body in chosen.items() for point in body["defaults"][task]]
    return [{"id": f"{i}-{family}", "family": family, "select": bool(point.get(search_space.SELECT, False)),
             "params": {k: v for k, v in point.items() if k != search_space.SELECT}}
            for i, (family, point) in enumerate(points)]


def get_family(name: str, task: str) -> Family:
    """The family called ``name``; a ValueError names it when it is unknown or does not serve ``task``."""
    found = FAMILIES.get(name)
    if found is None:
        raise ValueError(f"unknown model family {name!r}: known are {', '.join(FAMILIES)}")
    if task not in found.tasks:
        raise ValueError(f"model family {name!r} does not do {task} (it does {', '.join(found.tasks)})")
    return found


def chosen_families(text: str) -> list[str]:
    """The family names of the ``families`` setting (comma-separated; empty: all); a ValueError names an unknown one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown model family {unknown[0]!r}: known are {', '.join(FAMILIES)}")
    return names


def families(task: str, tasks: int = 0, space: dict[str, Any] | None = None,
             budget: dict[str, Any] | None = None, only: str = "") -> list[dict[str, Any]]:
    """The search grouped by model family, in order: one fan-out task per family.

    Each group carries its families' spaces (``spaces``), its default candidates and the search
    budget (``budget``: components/tune.py). ``only`` (the ``families`` setting) keeps those
    families; a ValueError says so when none of them does ``task``. With ``tasks`` > 0 and fewer than the families, the
    families are packed into that many tasks of about equal cost, the costliest first. kfp.local
    runs two tasks at once: a third would wait for a free slot and pay an interpreter's start-up
    again after it.
    """
    from components import search_space

    keep = set(chosen_families(only))
    chosen = search_space.for_task(space or search_space.default(), task, user=space is not None)
    chosen = {f: body for f, body in chosen.items() if not keep or f in keep}
    if not chosen:
        raise ValueError(f"setting 'families' ({only}) names no model family that does {task}: "
                         f"{', '.join(f.name for f in FAMILIES.values() if task in f.tasks)} do")
    groups: dict[str, list[dict[str, Any]]] = {family: [] for family in chosen}
    for c in candidates(task, space):
        if c["family"] in groups:
            groups[c["family"]].append(c)

    def group(members: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
        return {"family": "+".join(names), "candidates": members, "spaces": {f: chosen[f] for f in names},
                "budget": budget or {}}

    if not 0 < tasks < len(groups):
        return [group(members, [family]) for family, members in groups.items()]

    def cost(names: list[str]) -> int:
        # a family searched beyond its defaults costs its trials; with only defaults, its defaults
        n = lambda f: max(len(groups[f]), 1)  # noqa: E731
        return sum(FAMILIES[f].cost * n(f) for f in names)

    bins: list[list[str]] = [[] for _ in range(tasks)]
    for family in sorted(groups, key=lambda f: cost([f]), reverse=True):  # largest first, into the lightest task
        min(bins, key=cost).append(family)
    order = list(groups)
    packed = sorted((sorted(b, key=order.index) for b in bins if b), key=cost, reverse=True)
    return [group([c for f in names for c in groups[f]], names) for names in packed]


def family_params(task: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """A candidate's parameters over its family's defaults (those of the task included)."""
    fam = get_family(name, task)
    # parameters may come back from JSON as floats (KFP); integers stay integers
    params = {k: int(v) if isinstance(v, float) and v.is_integer() and k in _INT_PARAMS else v for k, v in params.items()}
    return {**fam.defaults, **TASK_DEFAULTS.get((name, task), {}), **params}


def estimator(task: str, name: str, params: dict[str, Any], seed: int, schema: Schema) -> Any:
    """The estimator of family ``name`` with its defaults overridden by ``params``."""
    return get_family(name, task).factory(task, family_params(task, name, params), seed, schema)


def make_model(schema: Schema, candidate: dict[str, Any], seed: int) -> Pipeline:
    from components.features import build, build_native

    est = estimator(schema.task, candidate["family"], candidate["params"], seed, schema)
    if get_family(candidate["family"], schema.task).native:
        return build_native(schema, est)
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


def sample_positions(rows: int, max_rows: int, seed: int) -> np.ndarray | None:
    """The row positions ``sample_rows`` keeps from a table of ``rows`` rows, ascending (None: every row)."""
    import numpy as np

    if rows <= max_rows:
        return None
    # what DataFrame.sample(n=max_rows, random_state=seed) draws, then sort_index
    return np.sort(np.random.RandomState(seed).choice(rows, size=max_rows, replace=False))


def read_sample(path: str, columns: list[str], max_rows: int, seed: int) -> pd.DataFrame:
    """The rows ``sample_rows`` would pick from the whole Parquet file at ``path`` (``columns`` only), read one
    row group at a time: the process holds one row group and the sample, never the table.

    Every row group is still decoded (the sample is uniform over the rows); only the sampled rows are kept.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    keep = sample_positions(source.metadata.num_rows, max_rows, seed)
    if keep is None:
        return source.read(columns=columns).to_pandas()
    parts, start = [], 0
    for group in range(source.num_row_groups):
        end = start + source.metadata.row_group(group).num_rows
        lo, hi = np.searchsorted(keep, [start, end])
        if hi > lo:
            parts.append(source.read_row_group(group, columns=columns).take(keep[lo:hi] - start))
        start = end
    return pa.concat_tables(parts).to_pandas()


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
    for fit_rows, test_rows in _cv(schema, folds, seed).split(X, y):
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


def standard_error(result: dict[str, Any]) -> float:
    """The standard error of a trial's CV score: the folds' sample standard deviation over the square root of
    their count (``std`` is the folds' population standard deviation, as ``np.std`` gives it)."""
    folds = int(result.get("folds") or 0)
    return float(result.get("std") or 0.0) / math.sqrt(folds - 1) if folds > 1 else 0.0


def best(results: list[dict[str, Any] | list[dict[str, Any]] | str]) -> dict[str, Any]:
    """The chosen trial among those scored on every fold: the best fixed point (a family's default, the champion's
    point) unless a proposed trial (the sampler's, or a champion's trial proposed again) beats it by more than that
    trial's standard error.

    The one-standard-error rule: with many sampled trials, the highest CV score is partly the folds'
    luck (it is the maximum of many noisy estimates), so a sampled trial must be better than the
    untuned points by more than its own score's noise to be chosen; otherwise the search keeps what
    a search without a budget would have chosen, and a bigger budget cannot make a worse choice out
    of noise alone. Ties go to the simpler, earlier candidate. ``results`` holds candidate results,
    or lists of them (one per family task), or their JSON; pruned and failed trials (``state``) are
    never chosen.
    """
    parsed = trials_of(results)
    complete = [r for r in parsed if r.get("state", "complete") == "complete"]
    if parsed and all(r.get("state") == "refused" for r in parsed):
        from components.refit import none_fits

        raise none_fits(parsed)
    if not complete:
        failed = [f"{r['candidate']['id']}: {r['error']}" for r in parsed if r.get("state") == "failed"][:3]
        raise ValueError("no candidate was scored" + (f" (every trial failed; first: {'; '.join(failed)})" if failed else ""))

    def top(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return max(rows, key=lambda r: (round(r["score"], 6), -_rank(r["candidate"]["id"])))

    chosen = top(complete)
    fixed = [r for r in complete if r.get("origin", "default") in FIXED]
    if not fixed or chosen.get("origin", "default") in FIXED:
        return chosen
    incumbent = top(fixed)
    return chosen if chosen["score"] - incumbent["score"] > standard_error(chosen) else incumbent


def refit(train: pd.DataFrame, schema: Schema, candidate: dict[str, Any], seed: int) -> Pipeline:
    """Fit the chosen candidate on all training rows."""
    from components.features import xy

    X, y = xy(train, schema)
    return make_model(schema, candidate, seed).fit(X, y)
