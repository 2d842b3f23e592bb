"""The refit within a memory budget (components/refit.py): XGBoost from Parquet batches with
external memory, any other family refused in one sentence when it would not fit."""

from __future__ import annotations

import numpy as np
import pytest

from components import refit, train
from components.data import DatasetSpec, infer_schema, normalise
from components.features import xy
from components.onnx_export import export_onnx
from components.synthetic import churn


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    frame = churn(6000, seed=5).drop(columns=["signup_date"])
    frame["churned"] = frame["churned"].map({0: "stays", 1: "leaves"})
    spec = DatasetSpec("t", "churned", timestamp="event_time", id_columns=["customer_id"])
    frame = normalise(frame, spec)
    schema = infer_schema(frame, spec)
    path = tmp_path_factory.mktemp("refit") / "train.parquet"
    frame.iloc[:5000].to_parquet(path, index=False, row_group_size=1000)
    return str(path), frame.iloc[:5000], frame.iloc[5000:], schema


def _candidate(family: str) -> dict:
    return next(c for c in train.candidates("classification") if c["family"] == family)


def test_xgboost_over_budget_trains_from_parquet_batches_like_in_memory(table):
    path, tr, ho, schema = table
    cand = _candidate("xgboost")
    assert not refit.plan(path, schema, cand, budget_mb=8000).streamed
    model, rows, chosen = refit.refit(path, schema, cand, 0, budget_mb=1)
    assert chosen.streamed and chosen.rows == 5000
    assert 0 < len(rows) <= 5000  # the reference sample, read batch by batch
    in_memory = train.refit(tr, schema, cand, 0)
    X, _ = xy(ho, schema)
    # the same booster parameters and data: the quantile sketch over batches may move a bin edge, no more
    assert np.mean(model.predict(X) == in_memory.predict(X)) > 0.97
    assert np.abs(model.predict_proba(X) - in_memory.predict_proba(X)).max() < 0.1
    assert set(model.predict(X)) <= {"stays", "leaves"}
    _, report = export_onnx(model, X, "classification")
    assert report["passed"], report["reason"]


def test_streamed_batches_are_smaller_than_the_table(table, monkeypatch):
    path, _, ho, schema = table
    seen: list[int] = []
    from components import features

    original = features.CategoryCodes.transform

    def counting(self, X):
        seen.append(len(X))
        return original(self, X)

    monkeypatch.setattr(features.CategoryCodes, "transform", counting)
    refit.xgboost_external(path, schema, _candidate("xgboost"), 0, batch_rows=700)
    assert max(seen) <= 700 and sum(seen) >= 5000  # every row, never more than a batch at once


def test_a_family_that_would_not_fit_is_refused_in_one_sentence_before_training(table):
    path, _, _, schema = table
    with pytest.raises(refit.MemoryBudgetError,
                       match=r"the refit of candidate 2-random_forest \(random_forest\) on 5,000 rows would need about "
                             r"[\d,]+ MB, more than the refit_memory_mb budget of 100 MB"):
        refit.refit(path, schema, _candidate("random_forest"), 0, budget_mb=100)


def test_a_forest_of_millions_of_leaves_is_estimated_beyond_the_default_budget(table):
    _, _, _, schema = table
    cand = _candidate("random_forest")
    assert refit.estimate_mb(schema, cand, rows=5_000_000, frame=500) > 8000
    assert refit.estimate_mb(schema, _candidate("xgboost"), rows=5_000_000, frame=500) < \
        refit.estimate_mb(schema, cand, rows=5_000_000, frame=500) / 10


def test_lightgbm_over_budget_trains_through_a_sequence_like_in_memory(table):
    path, tr, ho, schema = table  # row groups of 1,000 rows, batches of 700: slices cross row groups
    cand = _candidate("lightgbm")
    model, _, chosen = refit.refit(path, schema, cand, 0, budget_mb=1)
    assert chosen.streamed and chosen.family == "lightgbm"
    X, _ = xy(ho, schema)
    in_memory = train.refit(tr, schema, cand, 0)
    np.testing.assert_allclose(model.predict_proba(X), in_memory.predict_proba(X), atol=1e-6)
    _, report = export_onnx(model, X, "classification")
    assert report["passed"], report["reason"]
    again = refit.lightgbm_sequence(path, schema, cand, 0, batch_rows=700)
    np.testing.assert_allclose(again.predict_proba(X), model.predict_proba(X), atol=1e-9)


def test_the_streamed_lightgbm_estimator_also_fits_in_memory(table):
    from components import gbt
    from components.features import native_preprocessor

    _, tr, ho, schema = table
    prep = native_preprocessor(schema).fit(tr[schema.feature_names])
    params, rounds = gbt.lightgbm_train_params("classification", {"num_leaves": 15}, seed=0)
    est = gbt.LightGBMBoosterClassifier(classes=["leaves", "stays"], params=params, rounds=20)
    est.fit(prep.transform(tr[schema.feature_names]), tr["churned"])
    proba = est.predict_proba(prep.transform(ho[schema.feature_names]))
    assert proba.shape == (len(ho), 2) and np.allclose(proba.sum(axis=1), 1)
    assert set(est.predict(prep.transform(ho[schema.feature_names]))) <= {"leaves", "stays"}


def test_the_search_plans_each_familys_refit_and_refuses_those_over_budget_in_one_sentence(table):
    path, _, _, schema = table
    defaults = train.candidates("classification")
    families = sorted({c["family"] for c in defaults})
    refused = refit.refused_families(path, schema, defaults, families, budget_mb=300)
    # every in-memory family costs the interpreter's 400 MB at least; the boosted ones stream instead
    assert set(refused) == set(families) - {"xgboost", "lightgbm"}
    record = refused["random_forest"]
    assert record["state"] == "refused" and record["score"] is None and record["budget_mb"] == 300
    assert record["estimated_mb"] == round(refit.estimate_mb(schema, _candidate("random_forest"), 5000,
                                                             refit.frame_mb(path, schema)[1]))
    assert record["error"].startswith("model family random_forest is refused before training: its refit on 5,000 rows "
                                      f"would need about {record['estimated_mb']:,} MB, more than the refit_memory_mb budget of 300 MB")
    assert refit.refused_families(path, schema, defaults, families, budget_mb=8000) == {}
    with pytest.raises(refit.MemoryBudgetError, match=r"^no model family fits the refit_memory_mb budget of 300 MB"):
        train.best(list(refused.values()))


def test_the_refit_takes_the_best_trial_that_fits_when_a_better_sampled_one_would_not(table):
    path, _, _, schema = table
    forest = {**_candidate("random_forest"), "id": "7-random_forest", "params": {"n_estimators": 400, "min_samples_leaf": 1}}
    logistic = _candidate("logistic")
    trials = [{"candidate": forest, "metric": "balanced_accuracy", "score": 0.9, "std": 0.0, "origin": "default"},
              {"candidate": logistic, "metric": "balanced_accuracy", "score": 0.8, "std": 0.0, "origin": "default"}]
    budget = 600  # the forest of 400 fully grown trees needs about 700 MB, logistic about 410 MB
    assert refit.estimate_mb(schema, forest, 5000, refit.frame_mb(path, schema)[1]) > budget
    assert refit.estimate_mb(schema, logistic, 5000, refit.frame_mb(path, schema)[1]) < budget  # the premise
    marked = refit.within_budget(path, schema, trials, budget_mb=budget)
    assert train.best(marked)["candidate"]["id"] == logistic["id"]
    assert marked[0]["state"] == "refused" and marked[0]["score"] == 0.9
    assert marked[0]["error"].startswith("trial 7-random_forest is refused before training: its refit on 5,000 rows "
                                         "would need about")
    assert marked[1] == trials[1]
    refit.refit(path, schema, train.best(marked)["candidate"], 0, budget_mb=budget)  # the chosen one fits
