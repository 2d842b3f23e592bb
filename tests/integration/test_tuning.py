"""The search (issue 23): the search space as data, the budget, Optuna's trials with pruning over
folds, failed trials, the study kept as data (resume) and warm starts, on small real tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import cross_val_score

from components import search_space, train, tune
from components.data import DatasetSpec, infer_schema
from components.features import xy
from components.settings import ConfigError, load_settings
from components.store import open_store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cancer():
    frame = load_breast_cancer(as_frame=True).frame
    return frame, infer_schema(frame, DatasetSpec(source="cancer", target="target", task="classification"))


@pytest.fixture(scope="module")
def diabetes():
    frame = load_diabetes(as_frame=True).frame
    return frame, infer_schema(frame, DatasetSpec(source="diabetes", target="target", task="regression"))


def _space(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --- the search space as data ------------------------------------------------------------------

def test_the_projects_space_has_every_family_and_its_defaults_are_the_search_before_tuning():
    space = search_space.default()
    assert set(space) == {"logistic", "linear", "random_forest", "hist_gradient_boosting", "xgboost", "lightgbm"}
    assert space["logistic"]["params"]["C"] == {"low": 1e-3, "high": 100.0, "log": True, "int": False}
    # defaults per task where a classifier's and a regressor's differ (issue 25.3's boosted families)
    assert [d["defaults"]["regression"][0]["n_estimators"] for d in (space["xgboost"], space["lightgbm"])] == [300, 300]
    assert space["random_forest"]["defaults"]["classification"] == space["random_forest"]["defaults"]["regression"]
    # the defaults are the fixed candidates the search had before it was tuned, in the same order
    assert [(c["id"], c["params"], c["select"]) for c in train.candidates("classification")] == [
        ("0-logistic", {"C": 1.0}, False), ("1-logistic", {"C": 0.1}, True),
        ("2-random_forest", {"n_estimators": 150, "min_samples_leaf": 2}, False),
        ("3-hist_gradient_boosting", {"learning_rate": 0.1, "max_leaf_nodes": 31}, False),
        ("4-hist_gradient_boosting", {"learning_rate": 0.05, "max_leaf_nodes": 63}, True),
        ("5-xgboost", {"n_estimators": 200, "learning_rate": 0.1, "max_depth": 6}, False),
        ("6-lightgbm", {"n_estimators": 200, "learning_rate": 0.05, "num_leaves": 31}, False)]
    # every family of this build, in every task it trains, takes every parameter its space names
    search_space.check_families({f: b for f, b in space.items() if train.family_tasks(f)}, "default")


@pytest.mark.parametrize(("data", "message"), [
    ({"random_forrest": {"params": {"n_estimators": {"low": 10, "high": 100, "int": True}}}},
     "'random_forrest' is not a model family of this build (known: logistic, linear, random_forest, hist_gradient_boosting, xgboost, lightgbm)"),
    ({"random_forest": {"params": {"n_estimator": {"low": 10, "high": 100, "int": True}}}},
     "family 'random_forest', parameter 'n_estimator': not a parameter of its classification estimator"),
    ({"logistic": {"params": {"C": {"low": 10, "high": 1}}}}, "family 'logistic', parameter 'C': low (10) must be below high (1)"),
    ({"logistic": {"params": {"C": {"low": 0, "high": 1, "log": True}}}}, "parameter 'C': a log scale needs low > 0, got 0"),
    ({"logistic": {"params": {"C": {"low": 1, "hi": 2}}}}, "parameter 'C': a range is {low, high[, log][, int]}"),
    ({"logistic": {"params": {"C": {"low": 0.1, "high": 1.0}}, "defaults": [{"C": 5.0}]}},
     "parameter 'C': the default 5.0 is outside its range"),
    ({"logistic": {"params": {"C": {"low": 0.1, "high": 1.0}}, "defaults": [{"tol": 1}]}},
     "parameter 'tol': a default names a parameter that 'params' does not"),
    ({"random_forest": {"params": {"max_depth": {"choices": [None, 8]}}}}, "parameter 'max_depth': null is not a value"),
    ({"logistic": {"params": {"C": 1.0}, "defaults": {"classifier": [{"C": 1.0}]}}},
     "family 'logistic': 'defaults' per task are keyed by classification or regression, got ['classifier']"),
    ({"logistic": {"ranges": {}}}, "family 'logistic': give 'params' (and optionally 'defaults'), got ['ranges']"),
    (["logistic"], "must map model family names to their spaces"),
])
def test_a_bad_search_space_is_one_sentence_naming_the_file_family_and_parameter(tmp_path, data, message):
    path = _space(tmp_path, data)
    with pytest.raises(search_space.SearchSpaceError) as raised:
        search_space.load(path)
    assert message in str(raised.value) and str(path) in str(raised.value)
    assert isinstance(raised.value, ConfigError)  # the CLI and the step records treat it as the user's error


def test_a_space_that_reaches_the_search_unchecked_is_refused_before_any_trial_naming_the_family_and_parameter(cancer):
    # a run started from the KFP UI with its search_space parameter edited: no CLI or settings edge checked it
    frame, schema = cancer
    space = search_space.parse({"logistic": {"params": {"C": {"low": 0.1, "high": 1.0}}},
                                "random_forest": {"params": {"n_estimator": 50}}})
    group = train.families("classification", tasks=1, space=space, budget={"trials": 4, "families": 2})[0]  # one task, both
    saved = []
    with pytest.raises(search_space.SearchSpaceError) as raised:
        tune.search(frame, schema, group, 2, 0, 10_000, save=saved.append)
    assert "search space (the run's): family 'random_forest', parameter 'n_estimator': not a parameter" in str(raised.value)
    assert saved == []  # no trial ran


def test_a_users_space_replaces_the_projects_and_only_its_families_are_searched(tmp_path):
    path = _space(tmp_path, {"random_forest": {"params": {"n_estimators": {"low": 10, "high": 60, "int": True}},
                                               "defaults": [{"n_estimators": 20}]}})
    space = search_space.load(path)
    groups = train.families("classification", space=space)
    assert [g["family"] for g in groups] == ["random_forest"]
    assert groups[0]["candidates"] == [{"id": "0-random_forest", "family": "random_forest", "select": False,
                                        "params": {"n_estimators": 20}}]
    with pytest.raises(search_space.SearchSpaceError, match="no family in it can train a regression model"):
        train.families("regression", space=search_space.load(_space(tmp_path, {"logistic": {"params": {"C": 1.0}}})))


# --- the budget -------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["trials", "time_budget_minutes"])
def test_a_budget_of_zero_is_one_sentence_naming_the_setting(field):
    with pytest.raises(ConfigError) as raised:
        load_settings(**{field: 0})
    assert str(raised.value) == (f"setting '{field}': Value error, a search budget of 0 trains no model: "
                                 "unset it for the default search or give more than 0")


def test_the_budget_in_trials_is_shared_among_the_families_and_unset_is_the_defaults():
    assert tune.Budget().trials_for(defaults=2) == 2  # unset: the defaults, the search before tuning
    assert tune.Budget(trials=10, families=3).trials_for(defaults=2) == 4
    assert tune.Budget(minutes=1.0).trials_for(defaults=2) == tune.MAX_TRIALS_PER_FAMILY  # time alone ends it


def test_a_time_budget_stops_new_trials_once_spent_but_the_first_always_runs(diabetes):
    frame, schema = diabetes
    group = train.families("regression", budget={"minutes": 1e-5, "families": 3})[0]  # 0.6 ms: spent by the first trial
    records = tune.search(frame, schema, group, 2, 0, 10_000)
    assert [(r["candidate"]["id"], r["state"]) for r in records] == [("0-linear", "complete")]


def test_the_fold_loop_scores_as_cross_val_score_does(cancer):
    frame, schema = cancer
    candidate = train.candidates("classification")[1]
    X, y = xy(frame, schema)
    want = cross_val_score(train.make_model(schema, candidate, 0), X, y, cv=train._cv(schema, 3, 0),
                           scoring="balanced_accuracy").mean()
    assert train.score_candidate(frame, schema, candidate, 3, 0, 10_000)["score"] == pytest.approx(want, abs=1e-12)


def test_among_equal_scores_the_best_is_a_default_then_the_champions_point_then_the_earliest_trial():
    def result(cid: str) -> dict:
        return {"candidate": {"id": cid}, "score": 0.8, "state": "complete"}

    assert train.best([result("linear-3"), result("linear-champion"), result("2-linear")])["candidate"]["id"] == "2-linear"
    assert train.best([result("linear-3"), result("linear-champion")])["candidate"]["id"] == "linear-champion"
    assert train.best([result("linear-12"), result("linear-3")])["candidate"]["id"] == "linear-3"
    assert train.best([result("linear-3"), {**result("1-linear"), "state": "pruned", "score": 0.9}])["candidate"]["id"] == "linear-3"


def test_a_sampled_trial_replaces_the_best_fixed_point_only_when_it_beats_it_by_more_than_one_standard_error():
    def result(cid: str, origin: str, score: float, std: float = 0.03) -> dict:
        return {"candidate": {"id": cid}, "origin": origin, "score": score, "std": std, "folds": 3, "state": "complete"}

    default, warm = result("0-lightgbm", "default", 0.90), result("lightgbm-champion", "warm", 0.905)
    se = 0.03 / 2 ** 0.5  # the folds' sample standard deviation over sqrt(3)
    assert train.standard_error(result("x", "sampler", 0.9)) == pytest.approx(se)
    # within one standard error of the best fixed point (the champion's here): the search keeps that point
    assert train.best([default, warm, result("lightgbm-7", "sampler", 0.905 + se * 0.9)])["candidate"]["id"] == "lightgbm-champion"
    # beyond it: the sampled trial is chosen
    assert train.best([default, warm, result("lightgbm-7", "sampler", 0.905 + se * 1.1)])["candidate"]["id"] == "lightgbm-7"
    # its own noise counts: a steadier trial needs less of a lead
    assert train.best([default, result("lightgbm-7", "sampler", 0.91, std=0.001)])["candidate"]["id"] == "lightgbm-7"
    # no fixed point scored on every fold (a time budget spent, the defaults failed): the best sampled trial
    assert train.best([{**default, "state": "failed", "score": None}, result("lightgbm-7", "sampler", 0.8)])["candidate"]["id"] == "lightgbm-7"


# --- the study --------------------------------------------------------------------------------

def test_fold_halving_stops_a_trial_below_the_best_half_at_a_rung():
    study = optuna.create_study(direction="maximize", pruner=tune.fold_halving())
    for score in (0.9, 0.8, 0.7):
        study.add_trial(optuna.trial.create_trial(value=score, intermediate_values={1: score, 2: score}))
    weak, strong = study.ask(), study.ask()
    weak.report(0.75, 1)  # rank 3 of 4 at fold 1: outside the best half
    strong.report(0.85, 1)  # rank 2 of 4: inside
    assert weak.should_prune() and not strong.should_prune()
    strong.report(0.5, 3)  # fold 3 is no rung (1, 2, 4, ...)
    assert not strong.should_prune()


def test_no_budget_scores_exactly_the_defaults_on_every_fold(diabetes):
    frame, schema = diabetes
    group = train.families("regression")[0]
    records = tune.search(frame, schema, group, 3, 0, 10_000)
    assert [r["candidate"]["id"] for r in records] == ["0-linear", "1-linear"]
    assert all(r["state"] == "complete" and r["origin"] == "default" and len(r["intermediate"]) == 3 for r in records)
    assert records[0]["score"] == train.score_candidate(frame, schema, group["candidates"][0], 3, 0, 10_000)["score"]


def test_a_search_of_the_defaults_alone_never_imports_optuna(tmp_path):
    # time to first model: a search task with no budget set pays no sampler's import
    code = ("import sys, json; from sklearn.datasets import load_diabetes; from components import train, tune; "
            "from components.data import DatasetSpec, infer_schema; f = load_diabetes(as_frame=True).frame; "
            "s = infer_schema(f, DatasetSpec(source='d', target='target', task='regression')); "
            "r = tune.search(f, s, train.families('regression')[0], 2, 0, 10000); "
            "print(json.dumps([len(r), 'optuna' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [2, False]


def test_a_budget_buys_sampled_trials_pruned_over_folds_and_the_best_is_complete(diabetes):
    frame, schema = diabetes
    space = {"linear": search_space.default()["linear"]}
    group = train.families("regression", space=space, budget={"trials": 12, "families": 1})[0]
    records = tune.search(frame, schema, group, 4, 0, 10_000)
    assert len(records) == 12
    assert [r["origin"] for r in records[:2]] == ["default", "default"]
    sampled = records[2:]
    assert all(r["origin"] == "sampler" for r in sampled)
    assert len({r["candidate"]["params"]["alpha"] for r in sampled}) == len(sampled)  # proposed, not repeated
    pruned = [r for r in sampled if r["state"] == "pruned"]
    assert pruned and all(r["folds"] < 4 and r["score"] == r["intermediate"][r["folds"]] for r in pruned)
    best = train.best(records)
    assert best["state"] == "complete" and best["score"] == max(r["score"] for r in records if r["state"] == "complete")


def test_a_trial_that_raises_is_recorded_as_failed_and_the_study_goes_on(cancer, tmp_path):
    frame, schema = cancer
    space = search_space.load(_space(tmp_path, {"logistic": {
        "params": {"C": {"low": 0.01, "high": 10.0, "log": True}, "solver": {"choices": ["lbfgs", "no-such-solver"]}},
        "defaults": [{"C": 1.0}]}}))
    group = train.families("classification", space=space, budget={"trials": 8, "families": 1})[0]
    records = tune.search(frame, schema, group, 2, 0, 10_000)
    failed = [r for r in records if r["state"] == "failed"]
    first_failure = records.index(failed[0])
    assert len(records) == 8 and any(r["state"] == "complete" for r in records[first_failure:])  # the study went on
    assert all("solver" in r["error"] and r["candidate"]["params"]["solver"] == "no-such-solver" for r in failed)
    assert train.best(records)["candidate"]["params"].get("solver", "lbfgs") == "lbfgs"
    # every trial failing is one sentence naming the first failures
    with pytest.raises(ValueError, match="every trial failed; first: logistic-"):
        train.best(failed)


def test_the_study_is_kept_in_the_store_and_a_rerun_resumes_it(diabetes, settings):
    frame, schema = diabetes
    store, key = open_store(settings.store, settings), tune.study_key("demo", "task-1")
    space = {"linear": search_space.default()["linear"]}
    small = train.families("regression", space=space, budget={"trials": 4, "families": 1})[0]
    first = tune.search(frame, schema, small, 3, 0, 10_000, save=lambda r: tune.record(store, key, r))
    assert tune.recorded(store, key) == json.loads(json.dumps(first))  # after every trial, the whole study so far
    again = tune.search(frame, schema, small, 3, 0, 10_000, history=tune.recorded(store, key))
    assert [r["seconds"] for r in again] == [r["seconds"] for r in first]  # nothing scored twice
    bigger = train.families("regression", space=space, budget={"trials": 7, "families": 1})[0]
    more = tune.search(frame, schema, bigger, 3, 0, 10_000, history=tune.recorded(store, key))
    assert len(more) == 7 and more[:4] == json.loads(json.dumps(first))  # it goes on from where it was


def test_a_warm_start_scores_the_champions_best_point_and_learns_from_its_trials(diabetes):
    frame, schema = diabetes
    space = {"linear": search_space.default()["linear"]}
    group = train.families("regression", space=space, budget={"trials": 8, "families": 1})[0]

    def trial(n: int, score: float, alpha: float) -> dict:
        return {"candidate": {"id": f"linear-{n}", "family": "linear", "select": False, "params": {"alpha": alpha}},
                "score": score, "state": "complete"}

    champion = [trial(5, 0.45, 0.02), trial(6, 0.30, 300.0), trial(7, 0.20, 900.0)]
    cold = tune.search(frame, schema, group, 3, 0, 10_000)
    warm = tune.search(frame, schema, group, 3, 0, 10_000, warm=champion)
    # the champion's best point first, then the defaults its study never scored
    assert [r["origin"] for r in warm[:3]] == ["warm", "default", "default"]
    assert warm[0]["candidate"]["params"] == {"alpha": 0.02}  # the champion's best point, scored on this data
    assert len(warm) == len(cold) + 1  # the champion's point comes on top of the budget
    # the sampler, seeded alike, proposes otherwise: it learnt from the champion's trials
    assert [r["candidate"]["params"] for r in warm[3:]] != [r["candidate"]["params"] for r in cold[2:]]
    assert all("intermediate" in r for r in warm)  # every record was scored here: the champion's are never candidates


def _champion_of_linear(scores: dict[float, float]) -> list[dict]:
    """A champion's recorded trials of the linear family: its defaults (alpha 1.0 and 10.0) and sampled points, by alpha."""
    defaults = {c["params"]["alpha"]: c for c in train.candidates("regression", {"linear": search_space.default()["linear"]})}
    return [{"candidate": defaults.get(alpha) or {"id": f"linear-{n}", "family": "linear", "select": False, "params": {"alpha": alpha}},
             "score": score, "state": "complete", "origin": "default" if alpha in defaults else "sampler"}
            for n, (alpha, score) in enumerate(scores.items())]


def test_a_warm_start_scores_the_champions_best_point_then_the_defaults_then_its_next_best(diabetes):
    frame, schema = diabetes
    space = {"linear": search_space.default()["linear"]}
    group = train.families("regression", space=space, budget={"trials": 8, "families": 1})[0]
    # the champion's study: its best point (alpha 0.02), then 300 and 0.5, above both defaults; 900 below one of them
    champion = _champion_of_linear({1.0: 0.40, 10.0: 0.42, 0.02: 0.45, 300.0: 0.44, 900.0: 0.41, 0.5: 0.43})
    warm = tune.search(frame, schema, group, 3, 0, 10_000, warm=champion)
    # the defaults right after the champion's point, in their order, even those it ranked below: drift can reverse that
    assert [(r["origin"], r["candidate"]["params"]["alpha"]) for r in warm[:5]] == [
        ("warm", 0.02), ("default", 1.0), ("default", 10.0), ("warm-trial", 300.0), ("warm-trial", 0.5)]
    assert [r["origin"] for r in warm[5:]] == ["sampler"] * 4
    assert len(warm) == 9  # the budget, and the champion's point on top of it
    # without a budget: the same fixed points in the same order
    fixed = tune.search(frame, schema, train.families("regression", space=space)[0], 3, 0, 10_000, warm=champion)
    assert [r["candidate"]["id"] for r in fixed] == ["linear-champion", "0-linear", "1-linear"]
    assert [r["score"] for r in fixed] == [r["score"] for r in warm[:3]]
    # a re-run that stopped after three trials goes on to the same nine
    again = tune.search(frame, schema, group, 3, 0, 10_000, history=json.loads(json.dumps(warm[:3])), warm=champion)
    def order(records: list[dict]) -> list[tuple]:  # a proposal's id is its trial's number in the study, not kept
        return [(r["origin"], r["candidate"]["params"]["alpha"]) for r in records]

    assert order(again[:5]) == order(warm[:5])
    assert len(again) == 9


def test_a_champions_trial_proposed_again_is_chosen_only_as_a_proposal_is():
    def result(cid: str, origin: str, score: float) -> dict:
        return {"candidate": {"id": cid}, "origin": origin, "score": score, "std": 0.03, "folds": 3, "state": "complete"}

    warm, default = result("linear-champion", "warm", 0.90), result("0-linear", "default", 0.89)
    # ahead of the fixed points by less than its standard error (0.03 / sqrt(2)): the champion's point stays
    assert train.best([warm, default, result("linear-7", "warm-trial", 0.91)])["candidate"]["id"] == "linear-champion"
    assert train.best([warm, default, result("linear-7", "warm-trial", 0.93)])["candidate"]["id"] == "linear-7"


def test_the_champions_fold_scores_inform_the_sampler_but_never_prune_a_trial_on_the_new_data(diabetes):
    frame, schema = diabetes
    space = {"linear": search_space.default()["linear"]}
    group = train.families("regression", space=space, budget={"trials": 8, "families": 1})[0]

    def trial(n: int, alpha: float) -> dict:  # scored on other data, far above what this table allows (r2 ~0.45)
        return {"candidate": {"id": f"linear-{n}", "family": "linear", "select": False, "params": {"alpha": alpha}},
                "score": 0.99, "state": "complete", "intermediate": {"1": 0.99, "2": 0.99, "3": 0.99}}

    champion = [trial(n, alpha) for n, alpha in enumerate((0.002, 0.01, 0.05, 0.3, 2.0, 40.0), start=2)]
    warm = tune.search(frame, schema, group, 3, 0, 10_000, warm=champion)
    no_folds = tune.search(frame, schema, group, 3, 0, 10_000, warm=[{k: v for k, v in r.items() if k != "intermediate"}
                                                                   for r in champion])
    # the same proposals, pruned alike: the pruner's rungs hold only the trials scored on this data
    assert [(r["candidate"]["params"], r["state"]) for r in warm] == [(r["candidate"]["params"], r["state"]) for r in no_folds]
    assert any(r["state"] == "complete" for r in warm if r["origin"] == "sampler")


# --- the user's side --------------------------------------------------------------------------

def test_flywheel_train_refuses_a_bad_search_space_or_a_zero_budget_in_one_sentence(tmp_path):
    data = tmp_path / "data.csv"
    load_breast_cancer(as_frame=True).frame.to_csv(data, index=False)
    bad = _space(tmp_path, {"logistic": {"params": {"C": {"low": 1, "high": 0.1}}}})
    base = [sys.executable, "-m", "pipelines.cli", "train", "--data", str(data), "--target", "target",
            "--store", str(tmp_path / "store")]
    for extra, message in (([f"--search-space={bad}"], f"search space {bad}: family 'logistic', parameter 'C': low (1) must be below high (0.1)"),
                           (["--trials=0"], "setting 'trials': Value error, a search budget of 0 trains no model")):
        proc = subprocess.run(base + extra, cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={"PATH": "", "COLUMNS": "300", "FLYWHEEL_PIPELINE_ROOT": str(tmp_path / "kfp")})
        assert proc.returncode == 1 and message in " ".join(proc.stderr.split()), proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "store" / "registry").exists()  # no run started
