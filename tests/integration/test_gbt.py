"""The gradient-boosted families (XGBoost, LightGBM): native categorical splits, the ONNX export
checked against the library's own prediction, and the bad input they meet."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from components import train
from components.data import DatasetSpec, infer_schema, normalise
from components.features import xy
from components.onnx_export import export_onnx, onnx_feed
from components.synthetic import churn


def _table(task: str, n: int = 3000) -> tuple[pd.DataFrame, pd.DataFrame, object]:
    frame = churn(n, seed=3).drop(columns=["signup_date"])  # no dates: the date parts have no ONNX form
    target = "churned" if task == "classification" else "avg_basket"
    if task == "classification":  # labels as text: XGBoost itself takes 0..k-1 only
        frame["churned"] = frame["churned"].map({0: "stays", 1: "leaves"})
    spec = DatasetSpec("t", target, timestamp="event_time", id_columns=["customer_id"])
    frame = normalise(frame, spec)
    frame = frame[frame[target].notna()].reset_index(drop=True)
    schema = infer_schema(frame, spec)
    cut = int(n * 0.8)
    return frame.iloc[:cut], frame.iloc[cut:].copy(), schema


def _candidate(task: str, family: str) -> dict:
    return next(c for c in train.candidates(task) if c["family"] == family)


def _uses_categorical_splits(fitted, family: str) -> bool:
    model = fitted.named_steps["model"]
    if family == "xgboost":
        trees = json.loads(model.get_booster().save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
        return any(any(t["split_type"]) for t in trees)
    return any(t["tree_structure"].get("decision_type") == "==" or "==" in json.dumps(t)
               for t in model.booster_.dump_model()["tree_info"])


@pytest.mark.parametrize("family", ["xgboost", "lightgbm"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_family_splits_categories_natively_and_exports_equal_onnx(task, family):
    tr, ho, schema = _table(task)
    ho.loc[ho.index[:40], "plan"] = "platinum"  # a level training never saw
    fitted = train.refit(tr, schema, _candidate(task, family), 0)

    assert _uses_categorical_splits(fitted, family)
    X = xy(ho, schema)[0]
    data, report = export_onnx(fitted, X, task)
    assert report["passed"], report["reason"]
    # the served graph answers like the library on every holdout row, the unseen level included
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    out = sess.run(None, onnx_feed(X, report["inputs"], {i.name: i.type for i in sess.get_inputs()}))
    if task == "classification":
        assert set(out[0]) <= {"stays", "leaves"}
        np.testing.assert_allclose(out[1], fitted.predict_proba(X), atol=1e-4)
        assert list(fitted.predict(X[:5])) == list(out[0][:5])
    else:
        np.testing.assert_allclose(out[0].ravel(), fitted.predict(X), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("family", ["xgboost", "lightgbm"])
def test_unseen_level_is_scored_as_missing(family):
    tr, ho, schema = _table("classification")
    fitted = train.refit(tr, schema, _candidate("classification", family), 0)
    unseen, missing = ho.head(50).copy(), ho.head(50).copy()
    unseen["plan"], missing["plan"] = "platinum", None
    np.testing.assert_array_equal(fitted.predict_proba(unseen[schema.feature_names]),
                                  fitted.predict_proba(missing[schema.feature_names]))


def test_every_candidate_names_a_family_that_serves_its_task():
    for task in ("classification", "regression"):
        names = {c["family"] for c in train.candidates(task)}
        assert {"xgboost", "lightgbm"} <= names
        assert all(task in train.FAMILIES[n].tasks for n in names)


@pytest.mark.parametrize(("name", "task", "message"), [
    ("catboost", "classification", "unknown model family 'catboost'"),
    ("logistic", "regression", "model family 'logistic' does not do regression"),
])
def test_bad_family_is_one_sentence(name, task, message):
    with pytest.raises(ValueError, match=message):
        train.get_family(name, task)


def test_the_families_setting_names_an_unknown_family_in_one_sentence():
    from components.settings import ConfigError, load_settings

    assert load_settings(families=" xgboost, lightgbm ").families == "xgboost,lightgbm"
    with pytest.raises(ConfigError, match=r"setting 'families': .*unknown model family 'catbost': known are logistic"):
        load_settings(families="xgboost,catbost")


def test_the_search_keeps_only_the_chosen_families():
    groups = train.families("regression", only="xgboost,logistic")
    assert [g["family"] for g in groups] == ["xgboost"]  # logistic does no regression: left out
    with pytest.raises(ValueError, match="setting 'families' \\(logistic\\) names no model family that does regression"):
        train.families("regression", only="logistic")
