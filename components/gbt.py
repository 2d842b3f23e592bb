"""Gradient-boosted trees from the libraries made for them: XGBoost and LightGBM.

The parameter construction is a pure function per library (``xgboost_params``,
``lightgbm_params``): the search's scikit-learn estimators, the refit's external-memory
training (components/refit.py) and the distributed refit build their boosters from it, so
the three train the same model. Both libraries split on categorical columns natively; their
input is ``components.features.native_preprocessor`` (numbers as they are, categories as
codes), whose column layout ``native_feature_types`` describes.

components/train.py imports this module where a model is built: the search-space task starts
without xgboost; lightgbm is imported by the functions that use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.class_weight import compute_sample_weight
from xgboost import XGBClassifier, XGBRegressor

# Defaults every candidate starts from; a candidate's own parameters override them.
XGBOOST_DEFAULTS: dict[str, Any] = {"tree_method": "hist", "max_cat_to_onehot": 4, "max_bin": 256}
LIGHTGBM_DEFAULTS: dict[str, Any] = {"verbosity": -1, "max_cat_to_onehot": 4, "max_bin": 255}


def xgboost_params(task: str, params: dict[str, Any], n_classes: int = 2, seed: int = 0) -> dict[str, Any]:
    """The XGBoost booster parameters (``xgboost.train``'s ``params``) of a candidate.

    ``params`` are the candidate's (``n_estimators`` is the number of boosting rounds and is
    left out: ``xgboost_rounds``). Classification is ``binary:logistic`` for two classes and
    ``multi:softprob`` over ``n_classes`` otherwise; regression is squared error.
    """
    out = {**XGBOOST_DEFAULTS, **{k: v for k, v in params.items() if k != "n_estimators"}, "seed": seed}
    if task == "classification":
        out.update({"objective": "binary:logistic", "eval_metric": "logloss"} if n_classes <= 2 else
                   {"objective": "multi:softprob", "num_class": n_classes, "eval_metric": "mlogloss"})
    else:
        out.update(objective="reg:squarederror", eval_metric="rmse")
    return out


def xgboost_rounds(params: dict[str, Any]) -> int:
    """Boosting rounds of a candidate (``n_estimators``; XGBoost's default 100)."""
    return int(params.get("n_estimators", 100))


def lightgbm_params(task: str, params: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """The LightGBM parameters of a candidate (the scikit-learn estimator's keyword arguments)."""
    out = {**LIGHTGBM_DEFAULTS, **params, "random_state": seed}
    if task == "classification":
        out["class_weight"] = "balanced"  # the search's metric is balanced accuracy, as for the other families
    return out


class FlywheelXGBClassifier(XGBClassifier):
    """XGBClassifier over any labels, weighted to balanced classes like the other families.

    XGBoost takes labels 0..k-1 only; this one encodes them on fit and answers with the labels
    themselves (``classes_``), so the pipeline, its scorers and the ONNX export see the
    schema's classes.
    """

    def fit(self, X: Any, y: Any, **kwargs: Any) -> FlywheelXGBClassifier:
        encoder = LabelEncoder().fit(y)
        codes = encoder.transform(y)
        kwargs.setdefault("sample_weight", compute_sample_weight("balanced", codes))
        super().fit(X, codes, **kwargs)
        self.labels_ = encoder.classes_
        return self

    @property
    def classes_(self) -> np.ndarray:
        labels = getattr(self, "labels_", None)
        return labels if labels is not None else np.arange(self.n_classes_)

    def predict(self, X: Any, **kwargs: Any) -> np.ndarray:
        return self.classes_[np.asarray(super().predict(X, **kwargs), dtype=int)]


def xgboost_estimator(task: str, params: dict[str, Any], seed: int, feature_types: list[str],
                      n_classes: int = 2) -> Any:
    """The scikit-learn XGBoost estimator of a candidate; ``feature_types`` marks its categorical columns."""
    booster = xgboost_params(task, params, n_classes, seed)
    booster.pop("num_class", None)  # the scikit-learn estimator sets it from the labels
    if task == "classification":
        booster.pop("objective")  # likewise: binary or multi from the labels
    cls = FlywheelXGBClassifier if task == "classification" else XGBRegressor
    return cls(n_estimators=xgboost_rounds(params), enable_categorical=True, feature_types=feature_types, n_jobs=1,
               **booster)


def lightgbm_estimator(task: str, params: dict[str, Any], seed: int, categorical: list[int]) -> Any:
    """The scikit-learn LightGBM estimator of a candidate; ``categorical`` are its categorical column indices."""
    from lightgbm import LGBMClassifier, LGBMRegressor

    cls = LGBMClassifier if task == "classification" else LGBMRegressor
    # the categorical columns as a parameter (not a fit argument), so they travel with the estimator
    # through the pipeline, cross-validation and clones; "categorical_column" is LightGBM's alias of
    # categorical_feature that reaches the Dataset from the parameters (the name itself is refused there)
    extra = {"categorical_column": categorical} if categorical else {}
    return cls(n_jobs=1, **extra, **lightgbm_params(task, params, seed))


class _LightGBMBooster(BaseEstimator):
    """A LightGBM ``Booster`` trained outside scikit-learn (the refit from Parquet batches) as the
    pipeline's estimator: scikit-learn's predict/predict_proba over ``Booster.predict``, and the
    attributes onnxmltools' LightGBM converter reads (``booster_``, ``classes_``, ``boosting_type``)."""

    boosting_type = "gbdt"

    def __init__(self, booster: Any = None, classes: Any = None, params: dict[str, Any] | None = None,
                 rounds: int = 100, categorical: list[int] | None = None) -> None:
        self.booster = booster
        self.classes = classes
        self.params = params
        self.rounds = rounds
        self.categorical = categorical

    def fit(self, X: Any, y: Any) -> _LightGBMBooster:
        """Train the booster in memory with ``params`` (``lightgbm_train_params``); the streamed refit
        trains it from Parquet instead and hands it in."""
        import lightgbm

        label = np.asarray(y)
        if self.classes is not None:
            label = np.searchsorted(np.asarray(self.classes), label)
        data = lightgbm.Dataset(np.asarray(X, dtype=np.float64), label=label,
                                categorical_feature=self.categorical or "auto")
        self.booster = lightgbm.train(dict(self.params or {}), data, num_boost_round=self.rounds)
        return self

    @property
    def booster_(self) -> Any:
        return self.booster

    def __sklearn_is_fitted__(self) -> bool:
        return self.booster is not None

    def _raw(self, X: Any) -> np.ndarray:
        return np.asarray(self.booster.predict(np.asarray(X, dtype=np.float64)))


class LightGBMBoosterClassifier(ClassifierMixin, _LightGBMBooster):
    """A trained LightGBM classification booster over the labels ``classes`` (in its class order)."""

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.classes)

    def predict_proba(self, X: Any) -> np.ndarray:
        p = self._raw(X)
        return np.column_stack([1 - p, p]) if p.ndim == 1 else p

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class LightGBMBoosterRegressor(RegressorMixin, _LightGBMBooster):
    """A trained LightGBM regression booster."""

    def predict(self, X: Any) -> np.ndarray:
        return self._raw(X)


def lightgbm_train_params(task: str, params: dict[str, Any], n_classes: int = 2, seed: int = 0) -> tuple[dict[str, Any], int]:
    """``lightgbm.train``'s parameters and boosting rounds of a candidate: ``lightgbm_params`` with
    the objective the scikit-learn estimator would choose (class weights go in as row weights)."""
    sk = lightgbm_params(task, params, seed)
    rounds = int(sk.pop("n_estimators", 100))
    sk.pop("class_weight", None)
    sk["seed"] = sk.pop("random_state")
    if task == "classification":
        sk.update({"objective": "binary"} if n_classes <= 2 else {"objective": "multiclass", "num_class": n_classes})
    else:
        sk["objective"] = "regression"
    return sk, rounds
