"""Tune: one search task's study per model family, proposed by Optuna (TPE), pruned over folds.

A search task (one ParallelFor item, components/kfp_components.py ``train``) gets one or more
families with their spaces (components/search_space.py) and the budget. For each family it:

1. rebuilds the study from data: the trials this task recorded before (a resumed run) and, on a
   retrain, the champion's recorded trials of that family (a warm start: they inform the sampler,
   their scores came from other data, so they are never candidates themselves);
2. scores the family's default points in order, then asks the sampler for more while the budget
   lasts (``ask``), scoring each trial fold by fold and stopping it early when successive halving
   over the folds drops it (``FoldHalving``), and tells the study how it ended (``tell``). On a
   warm start (``warm_order``) the champion's best point comes first, then the defaults, and its
   next-best trials are the sampler's first proposals;
3. records every trial (parameters, CV score, seconds, complete/pruned/failed) through ``save``
   after each one, so the store holds the study as data: no database, no service.

A trial that raises is recorded as failed with its error and the study goes on.

Why the rounds (ask a trial, score it, tell the study) run inside a search task rather than as
pipeline tasks: a KFP DAG is static, so rounds as tasks would be a number of rounds fixed at
compile time, each paying two more tasks (propose, record) plus a fan-out; under kfp.local every
task is a process start, which would cost the first model its time on a small table. Here the
pipeline keeps its shape (one ParallelFor over the families, as before): families are searched
in parallel pods, each family's study learns from every trial before it (TPE is sequential at
heart), and with no budget set a task scores exactly the defaults it scored before.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components import search_space
from components.train import PRIMARY, score_candidate

if TYPE_CHECKING:
    import pandas as pd

    from components.data import Schema
    from components.store import Store

# Trials the version card, `flywheel models show` and the KFP metrics list, best first.
LEADERBOARD_ROWS = 10
# A search with only a time budget still ends: at most this many trials per family.
MAX_TRIALS_PER_FAMILY = 1000
# Random proposals before TPE models the history (the defaults and warm trials count too).
TPE_STARTUP_TRIALS = 4
# A warm start proposes again the champion's next-best trials after its best point: at most this many.
WARM_TRIALS = 2


@dataclass(frozen=True)
class Budget:
    """How much search a run buys: ``trials`` in all (0: each family's defaults only) and/or
    ``minutes`` of wall time per search task (0: no limit), shared among ``families``."""

    trials: int = 0
    minutes: float = 0.0
    families: int = 1

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> Budget:
        data = data or {}
        return cls(int(data.get("trials", 0) or 0), float(data.get("minutes", 0.0) or 0.0), int(data.get("families", 1) or 1))

    def trials_for(self, defaults: int) -> int:
        """Trials one family gets: its share of ``trials``, or its defaults when no trials are set
        (unbounded up to MAX_TRIALS_PER_FAMILY when only time is)."""
        if self.trials:
            return math.ceil(self.trials / self.families)
        return MAX_TRIALS_PER_FAMILY if self.minutes else max(defaults, 1)


class _Pruned(Exception):
    """Raised out of a trial's fold loop when the pruner stops it."""


def fold_halving(eta: int = 2, min_trials: int = 2) -> Any:
    """Successive halving over CV folds, as an Optuna pruner (public API only).

    Rungs are at folds 1, 2, 4, …: there a trial goes on only if its mean score so far is among
    the best 1/``eta`` of every trial's at that fold (the defaults' and the pruned ones' included),
    once ``min_trials`` others have reached it.
    """
    from optuna.pruners import BasePruner
    from optuna.trial import TrialState

    class FoldHalving(BasePruner):
        def prune(self, study: Any, trial: Any) -> bool:
            step = trial.last_step
            if step is None or step & (step - 1):  # not a rung (a power of two)
                return False
            value = trial.intermediate_values[step]
            others = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
                      if step in t.intermediate_values and t.number != trial.number]
            if len(others) < min_trials:
                return False
            keep = max(1, (len(others) + 1) // eta)
            return sum(v > value for v in others) >= keep

    return FoldHalving()


def _point(record: dict[str, Any]) -> dict[str, Any]:
    """A trial's point in its space's terms: the estimator's parameters plus ``select``."""
    return {**record["candidate"]["params"], search_space.SELECT: record["candidate"].get("select", False)}


def _frozen(record: dict[str, Any], space: dict[str, dict[str, Any]], dists: dict[str, Any], folds: bool = True) -> Any:
    """A recorded trial as an Optuna FrozenTrial (for ``study.add_trial``); None when it does not fit the space.

    ``folds=False`` leaves its fold scores out: it informs the sampler, but is no rung for the pruner."""
    from optuna.trial import TrialState, create_trial

    point = _point(record)
    params = {k: v for k, v in point.items() if k in dists}
    if not all(search_space.contains(space[k], v) for k, v in params.items()):
        return None  # a point outside the (user's new) space tells the sampler nothing about it
    steps = {int(k): float(v) for k, v in (record.get("intermediate") or {}).items()} if folds else {}
    state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(record.get("state", "complete"), TrialState.FAIL)
    return create_trial(state=state, value=record["score"] if state == TrialState.COMPLETE else None, params=params,
                        distributions={k: dists[k] for k in params}, intermediate_values=steps)


def warm_order(
    family: str, defaults: list[dict[str, Any]], champion: list[dict[str, Any]], params: dict[str, dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A family's fixed points in the order its study scores them, and the champion's trials it scores again.

    Returns ``fixed`` (scored before the sampler's trials) and ``rescore`` (points enqueued as the sampler's
    first proposals). Cold (no ``champion``, its complete trials of this family): the defaults, in order.
    Warm: the champion's best point first (a ``<family>-champion`` candidate, or the default it is), then the
    other defaults in order: drift can reverse the champion's ranking of them, they are what the
    one-standard-error rule prefers, and they cost a trial each. Then its next WARM_TRIALS best trials that
    beat every default it scored are proposed again, pruned as any proposal is and chosen only as one
    (``train.best``).
    """
    if not champion:
        return [dict(c) for c in defaults], []
    ranked = sorted(champion, key=lambda r: -r["score"])  # stable: among equal scores, the earlier trial

    def score(point: dict[str, Any]) -> float | None:
        return max((r["score"] for r in ranked if _point(r) == point), default=None)

    top = ranked[0]
    scored = [(c, score(_point({"candidate": c}))) for c in defaults]
    head = [dict(c) for c, s in scored if s is not None and s >= top["score"]][:1]
    if not head:
        head = [{"id": f"{family}-champion", "family": family, "params": dict(top["candidate"]["params"]),
                 "select": top["candidate"].get("select", False), "origin": "warm"}]
    fixed = head + [dict(c) for c in defaults if c["id"] != head[0]["id"]]
    bar = max((s for _, s in scored if s is not None), default=-math.inf)
    points = [_point({"candidate": c}) for c in fixed]
    rescore: list[dict[str, Any]] = []
    for r in ranked[1:]:
        point = _point(r)
        if r["score"] > bar and point not in points + rescore and set(point) == set(params) and \
                all(search_space.contains(params[k], v) for k, v in point.items()):
            rescore.append(point)
    return fixed, rescore[:WARM_TRIALS]


def _study(seed: int) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS),
                               pruner=fold_halving())


def search_family(
    train: pd.DataFrame, schema: Schema, family: str, space: dict[str, Any], defaults: list[dict[str, Any]],
    budget: Budget, folds: int, seed: int, max_rows: int, deadline: float | None = None,
    history: list[dict[str, Any]] | None = None, warm: list[dict[str, Any]] | None = None,
    save: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """One family's study (see the module docstring); returns its trial records, the ones in ``history`` first.

    ``defaults`` are the family's default candidates (train.candidates); ``history`` this task's
    records from before; ``warm`` the champion's records (any family: this one's are used);
    ``deadline`` a ``time.monotonic()`` after which no new trial starts (the first always runs).
    """
    params = space["params"]
    records = [r for r in history or [] if r["candidate"]["family"] == family]
    champion = [r for r in warm or [] if r["candidate"]["family"] == family and r.get("state", "complete") == "complete"]
    queue, rescore = warm_order(family, defaults, champion, params)
    # the champion's point comes on top of the budget: a warm start never has fewer trials than a cold one
    limit = budget.trials_for(len(defaults)) + any(c.get("origin") == "warm" for c in queue)
    done = {r["candidate"]["id"] for r in records}
    queue = [c for c in queue if c["id"] not in done]
    rescore = [p for p in rescore if p not in [_point(r) for r in records]]

    # a search of the fixed points alone (no budget set) never asks the sampler: no study, no Optuna import
    study, dists = None, {}
    if limit > len(records) + len(queue):
        from optuna.trial import TrialState

        dists = search_space.distributions(params)
        study = _study(seed)
        # this task's trials before (a resumed run), then the champion's: their scores came from other
        # data, so they guide the sampler but their fold scores never decide whether a trial here is pruned
        for r, folds_here in [(r, True) for r in records] + [(r, False) for r in champion]:
            if (frozen := _frozen(r, params, dists, folds_here)) is not None:
                study.add_trial(frozen)
        for point in rescore[: limit - len(records) - len(queue)]:  # the sampler's first proposals
            study.enqueue_trial({k: v for k, v in point.items() if k in dists}, user_attrs={"origin": "warm-trial"})

    while len(records) < limit and not (records and deadline is not None and time.monotonic() >= deadline):
        fixed = queue.pop(0) if queue else None  # the fixed points first, then the sampler's
        trial = None if fixed else study.ask()
        if fixed is not None:
            candidate = {k: v for k, v in fixed.items() if k != "origin"}
            origin = fixed.get("origin", "default")
        else:
            point = search_space.suggest(trial, params)
            candidate = {"id": f"{family}-{trial.number}", "family": family, "select": bool(point.pop(search_space.SELECT, False)),
                         "params": point}
            origin = trial.user_attrs.get("origin", "sampler")
        steps: dict[int, float] = {}

        def after_fold(k: int, mean: float, trial: Any = trial, steps: dict[int, float] = steps) -> None:
            steps[k] = mean
            if trial is not None:  # fixed points are scored on every fold: they are the baseline
                trial.report(mean, k)
                if k < folds and trial.should_prune():  # a trial through its last fold is complete
                    raise _Pruned

        start = time.perf_counter()
        record: dict[str, Any] = {"candidate": candidate, "metric": PRIMARY[schema.task], "origin": origin, "folds": folds}
        try:
            record |= score_candidate(train, schema, candidate, folds, seed, max_rows, after_fold) | {"state": "complete"}
        except _Pruned:
            record |= {"state": "pruned", "score": steps[max(steps)], "std": None, "folds": max(steps)}
        except Exception as exc:  # noqa: BLE001 - a trial that raises is recorded as failed and the study goes on
            record |= {"state": "failed", "score": None, "std": None, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        record |= {"seconds": round(time.perf_counter() - start, 3), "intermediate": steps}
        if trial is not None:
            state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(record["state"], TrialState.FAIL)
            study.tell(trial, record["score"] if state == TrialState.COMPLETE else None, state=state)
        elif study is not None and (frozen := _frozen(record, params, dists)) is not None:
            study.add_trial(frozen)
        records.append(record)
        if save:
            save(records)
    return records


def search(
    train: pd.DataFrame, schema: Schema, group: dict[str, Any], folds: int, seed: int, max_rows: int,
    history: list[dict[str, Any]] | None = None, warm: list[dict[str, Any]] | None = None,
    save: Callable[[list[dict[str, Any]]], None] | None = None, refused: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Every family of one search task (train.families), one after another; returns all their trial records.

    With a time budget, each family gets an equal part of the task's minutes. A family or parameter
    this build's estimators do not have is a SearchSpaceError naming it, before any trial: the
    space may come as a run's parameter that no edge checked (a run started from the KFP UI).
    A family in ``refused`` (its refit would not fit the memory budget: components/refit.py
    ``refused_families``) is not searched: its record there stands for it.
    """
    search_space.check_families(group["spaces"], "(the run's)")
    budget = Budget.of(group.get("budget"))
    names = list(group["spaces"])
    start = time.monotonic()
    done: list[dict[str, Any]] = []
    for i, family in enumerate(names):
        if family in (refused or {}):
            done = done + [refused[family]]
            continue
        deadline = start + budget.minutes * 60 * (i + 1) / len(names) if budget.minutes else None
        defaults = [c for c in group["candidates"] if c["family"] == family]
        so_far = list(done)
        done = so_far + search_family(
            train, schema, family, group["spaces"][family], defaults, budget, folds, seed, max_rows, deadline,
            history, warm, (lambda records, so_far=so_far: save(so_far + records)) if save else None)
    return done


def leaderboard(records: list[dict[str, Any]], top: int | None = None) -> list[dict[str, Any]]:
    """The trials best first (complete by score, then pruned, then failed): what the version card and ``models show`` print."""
    order = {"complete": 0, "pruned": 1, "failed": 2, "refused": 3}
    rows = sorted(records, key=lambda r: (order.get(r.get("state", "complete"), 3),
                                          -r["score"] if r.get("score") is not None else math.inf))
    return [{"id": r["candidate"]["id"], "family": r["candidate"]["family"], "params": r["candidate"]["params"],
             "select": r["candidate"].get("select", False), "state": r.get("state", "complete"), "score": r.get("score"),
             "folds": r.get("folds"), "seconds": r.get("seconds"), "origin": r.get("origin", "default"),
             **({"error": r["error"]} if r.get("error") else {})} for r in rows[:top]]


def counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """Trials per state: complete, pruned, failed, refused (a family over the refit's memory budget, not searched)."""
    return {state: sum(r.get("state", "complete") == state for r in records)
            for state in ("complete", "pruned", "failed", "refused")}


def params_text(row: dict[str, Any]) -> str:
    """A leaderboard row's parameters in one line (floats to 4 places)."""
    params = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row["params"].items()}
    return ", ".join(f"{k}={v}" for k, v in params.items()) + (", select" if row["select"] else "")


def cells(row: dict[str, Any]) -> tuple[str, str]:
    """A leaderboard row's score and state as printed (a failed trial's state carries its error)."""
    return (f"{row['score']:.4f}" if row["score"] is not None else "-"), row["state"] + (f": {row['error']}" if row.get("error") else "")


def leaderboard_markdown(records: list[dict[str, Any]], top: int = LEADERBOARD_ROWS) -> str:
    """The leaderboard as a Markdown table (the version card's and the KFP UI's)."""
    n = counts(records)
    lines = [f"{len(records)} trials: {n['complete']} complete, {n['pruned']} pruned (stopped early), {n['failed']} failed"
             + (f", {n['refused']} refused (a family over the refit's memory budget: {'; '.join(r['error'] for r in records if r.get('state') == 'refused')})"
                if n["refused"] else "") + ". "
             "The best trial is the best default point (or the champion's) unless a sampled trial leads it by more than "
             "that trial's CV standard error.", "",
             "| rank | trial | family | parameters | CV score | folds | seconds | state |", "|---|---|---|---|---|---|---|---|"]
    for rank, row in enumerate(leaderboard(records, top), start=1):
        score, state = cells(row)
        lines.append(f"| {rank} | {row['id']} | {row['family']} | {params_text(row)} | {score} | {row['folds']} | "
                     f"{row['seconds']} | {state} |")
    return "\n".join(lines) + "\n"


# --- the study as data in the store ----------------------------------------------------------

def study_key(model: str, task_key: str) -> str:
    """Where one search task's trials are kept (its inputs' digest: the same task resumes the same study)."""
    return f"studies/{model}/{task_key}.json"


def recorded(store: Store, key: str) -> list[dict[str, Any]]:
    """The trials recorded under ``key`` (none: a new study)."""
    from components.store import NotFound

    try:
        return json.loads(store.read(key))
    except NotFound:
        return []


def record(store: Store, key: str, records: list[dict[str, Any]]) -> None:
    """Keep the study's trials so far (one object, rewritten whole after each trial)."""
    store.write(key, json.dumps(records).encode())


def champion_trials(store: Store, model: str, champion: str) -> list[dict[str, Any]]:
    """The champion version's recorded trials (its ``trials.json``): a retrain's warm start. None for no champion,
    or a champion registered before the search recorded its trials."""
    from components.package import TRIALS
    from components.registry import Registry
    from components.store import NotFound

    if not champion:
        return []
    try:
        return json.loads(Registry(store, model).read(champion, TRIALS))
    except NotFound:
        return []
