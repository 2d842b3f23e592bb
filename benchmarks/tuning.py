"""Tuning benchmark (issue 23): the champion's holdout score against the search budget, and a
retrain's warm start against a cold search, per table.

Tables: scikit-learn's bundled breast cancer, wine and diabetes, and the project's own churn
table (components/synthetic.py). Each is split as the pipeline splits it (20% holdout, seed 42);
the search is the pipeline's own (components/tune.py, every family of the project's space in
turn, as one search task would run them) and the chosen trial is refit on all training rows
and scored on the holdout:

    1x    no budget set: each family's default points (the search as ``make run`` runs it)
    4x    ``trials`` = 4 x the defaults' count
    LightGBM  a default ``LGBMClassifier``/``LGBMRegressor`` behind the same preprocessing: a reference

Warm against cold, as a drift retrain: the champion's search (4x) ran on the older 60% of the
training rows; the retrain searches all of them, cold and warm-started from the champion's
trials, with the same 4x budget. Figure: the trials the warm search needed to reach the cold
search's best CV score, over the cold search's trials, both in the family that holds the cold
best (the families are separate studies in parallel tasks) (target <= 0.5).

Only scores and trial counts are figures: the seconds are printed for what they are, measured
on whatever else the machine runs. Run it with ``python -m benchmarks.tuning [out.json]``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pandas as pd

from components import search_space, split, train, tune
from components.data import DatasetSpec, Schema, infer_schema
from components.features import build, xy
from components.synthetic import churn

SEED, FOLDS, MAX_ROWS = 42, 3, 200_000
BUDGETS = (1, 4)
OLDER = 0.6  # the share of the training rows the champion was trained on


def tables() -> dict[str, tuple[pd.DataFrame, Schema]]:
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

    out = {}
    for name, loader, task in (("breast_cancer", load_breast_cancer, "classification"), ("wine", load_wine, "classification"),
                               ("diabetes", load_diabetes, "regression")):
        frame = loader(as_frame=True).frame
        out[name] = (frame, infer_schema(frame, DatasetSpec(source=name, target="target", task=task)))
    frame = churn(2000, seed=7)
    out["churn"] = (frame, infer_schema(frame, DatasetSpec(source="churn", target="churned", timestamp="event_time")))
    return out


def run_search(rows: pd.DataFrame, schema: Schema, trials: int, warm: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every family of the project's space, one after another, under one budget (0: the defaults)."""
    families = search_space.for_task(search_space.default(), schema.task, user=False)
    groups = train.families(schema.task, 0, None, {"trials": trials, "families": len(families)})
    return [r for g in groups for r in tune.search(rows, schema, g, FOLDS, SEED, MAX_ROWS, warm=warm)]


def holdout_score(model: Any, holdout: pd.DataFrame, schema: Schema) -> float:
    from sklearn.metrics import get_scorer

    X, y = xy(holdout, schema)
    return float(get_scorer(train.PRIMARY[schema.task])(model, X, y))


def lightgbm_default(rows: pd.DataFrame, holdout: pd.DataFrame, schema: Schema) -> float:
    import lightgbm

    est = (lightgbm.LGBMClassifier if schema.task == "classification" else lightgbm.LGBMRegressor)(random_state=SEED, verbose=-1)
    X, y = xy(rows, schema)
    return holdout_score(build(schema, est, False, SEED).fit(X, y), holdout, schema)


def trials_to_reach(records: list[dict[str, Any]], score: float) -> int | None:
    """How many trials (in the order they ran) until one scored at least ``score`` on every fold."""
    for n, r in enumerate(records, start=1):
        if r["state"] == "complete" and r["score"] >= score - 1e-9:
            return n
    return None


def one_table(frame: pd.DataFrame, schema: Schema) -> dict[str, Any]:
    rows, holdout = split.split(frame, schema, 0.2, SEED)
    defaults = len(train.candidates(schema.task))
    out: dict[str, Any] = {"task": schema.task, "metric": train.PRIMARY[schema.task], "rows": len(rows), "defaults": defaults}
    searched = {}
    for factor in BUDGETS:
        start = time.perf_counter()
        records = run_search(rows, schema, 0 if factor == 1 else factor * defaults)
        best = train.best(records)
        searched[factor] = records
        out[f"{factor}x"] = {"trials": len(records), **tune.counts(records), "cv": round(best["score"], 4),
                             "holdout": round(holdout_score(train.refit(rows, schema, best["candidate"], SEED), holdout, schema), 4),
                             "best": best["candidate"]["id"], "seconds_under_load": round(time.perf_counter() - start, 1)}
    out["lightgbm_default_holdout"] = round(lightgbm_default(rows, holdout, schema), 4)

    # a drift retrain: the champion searched the older rows; the retrain searches all, cold or warm
    older = rows.iloc[: int(len(rows) * OLDER)] if schema.timestamp else rows.sample(frac=OLDER, random_state=SEED)
    champion = run_search(older, schema, max(BUDGETS) * defaults)
    cold = searched[max(BUDGETS)]
    warm = run_search(rows, schema, max(BUDGETS) * defaults, warm=champion)
    top = train.best(cold)
    cold_best, family = top["score"], top["candidate"]["family"]
    # counted in the family that holds the cold best: families are searched in parallel tasks, each its own study
    cold_family = [r for r in cold if r["candidate"]["family"] == family]
    reached = trials_to_reach([r for r in warm if r["candidate"]["family"] == family], cold_best)
    out["warm"] = {"family": family, "cold_trials": len(cold_family), "warm_trials": len(warm), "cold_best_cv": round(cold_best, 4),
                   "warm_best_cv": round(train.best(warm)["score"], 4), "warm_trials_to_cold_best": reached,
                   "share_of_cold_trials": round(reached / len(cold_family), 2) if reached else None,
                   "warm_holdout": round(holdout_score(train.refit(rows, schema, train.best(warm)["candidate"], SEED), holdout, schema), 4)}
    return out


def main(out_json: str | None = None) -> dict[str, Any]:
    results = {name: one_table(frame, schema) for name, (frame, schema) in tables().items()}
    if out_json:
        from pathlib import Path

        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(results, indent=2))
    return results


def rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, target) lines for the ``make bench`` table."""
    out = []
    for name, t in r.items():
        if not isinstance(t, dict) or "1x" not in t:
            continue
        one, four, w = t["1x"], t[f"{max(BUDGETS)}x"], t["warm"]
        out.append((f"{name} ({t['metric']}, {t['rows']} rows): holdout 1x | 4x | default LightGBM",
                    f"{one['holdout']} | {four['holdout']} | {t['lightgbm_default_holdout']}  "
                    f"(trials {one['trials']} | {four['trials']}, {four['pruned']} pruned, {four['failed']} failed; "
                    f"CV {one['cv']} | {four['cv']})", "4x >= 1x; within 0.01 of LightGBM"))
        out.append((f"{name}: warm retrain, trials to the cold search's best CV / cold trials ({w['family']})",
                    f"{w['warm_trials_to_cold_best']} / {w['cold_trials']} = {w['share_of_cold_trials']}  "
                    f"(best CV cold {w['cold_best_cv']} | warm {w['warm_best_cv']}; holdout warm {w['warm_holdout']})", "<= 0.5"))
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
