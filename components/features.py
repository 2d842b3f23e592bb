"""Features: the preprocessing pipeline that ships inside every model (the split: components/split.py).

Everything here is fit on training rows only; the fitted pipeline is pickled with the
estimator, so serving applies exactly what training did.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor
from sklearn.feature_selection import SelectFromModel
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from components.data import Schema

DATE_PARTS = ("year", "month", "day", "dayofweek", "hour")


def date_parts(x: Any) -> np.ndarray:
    """Calendar parts of each datetime column (module-level so the model pickles)."""
    df = pd.DataFrame(x)
    cols = []
    for c in df.columns:
        d = pd.to_datetime(df[c], errors="coerce")
        cols += [getattr(d.dt, p).astype("float64").to_numpy() for p in DATE_PARTS]
    return np.column_stack(cols) if cols else np.empty((len(df), 0))


def _to_str(x: Any) -> np.ndarray:
    """Categories as strings, missing as None (so the imputer sees them)."""
    df = pd.DataFrame(x).astype("object")
    return df.where(df.notna(), None).astype("object").map(lambda v: None if v is None else str(v)).to_numpy()


class DropUninformative(BaseEstimator, TransformerMixin):
    """Drop near-constant and duplicate columns, learned on the training rows."""

    def __init__(self, min_variance: float = 1e-8) -> None:
        self.min_variance = min_variance

    def fit(self, X: Any, y: Any = None) -> DropUninformative:
        a = _dense(X)
        var = np.nanvar(a, axis=0) if a.size else np.zeros(a.shape[1])
        keep = var > self.min_variance
        seen: set[bytes] = set()
        for i in np.flatnonzero(keep):
            key = np.ascontiguousarray(a[: min(len(a), 5000), i]).tobytes()
            if key in seen:
                keep[i] = False
            seen.add(key)
        if not keep.any() and a.shape[1]:
            keep[np.argmax(var)] = True
        self.keep_ = keep
        return self

    def transform(self, X: Any) -> np.ndarray:
        return _dense(X)[:, self.keep_]


def _dense(X: Any) -> np.ndarray:
    if hasattr(X, "toarray"):
        X = X.toarray()
    return np.asarray(X, dtype="float64")


def preprocessor(schema: Schema) -> ColumnTransformer:
    """Impute + scale numbers (sparse ones with a missing-indicator), impute + one-hot categories
    (unknowns ignored), date parts."""
    by_kind: dict[str, list[str]] = {"numeric": [], "categorical": [], "datetime": [], "boolean": []}
    sparse: list[str] = []
    for c in schema.features:
        (sparse if c.missing_indicator else by_kind[c.kind]).append(c.name)
    parts: list[tuple[str, Any, list[str]]] = []
    numeric = by_kind["numeric"] + by_kind["boolean"]
    if numeric:
        parts.append(("numeric", make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()), numeric))
    if sparse:  # mostly missing: whether a value was there is itself a signal
        parts.append(("sparse", make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True, add_indicator=True), StandardScaler()), sparse))
    if by_kind["categorical"]:
        parts.append((
            "categorical",
            make_pipeline(
                FunctionTransformer(_to_str, feature_names_out="one-to-one"),
                SimpleImputer(strategy="constant", fill_value="__missing__"),
                OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5, max_categories=30, sparse_output=False),
            ),
            by_kind["categorical"],
        ))
    if by_kind["datetime"]:
        parts.append((
            "datetime",
            make_pipeline(FunctionTransformer(date_parts), SimpleImputer(strategy="median", keep_empty_features=True),
                          StandardScaler()),
            by_kind["datetime"],
        ))
    return ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)


def build(schema: Schema, estimator: Any, select_features: bool, seed: int) -> Pipeline:
    """The whole model: preprocessing, clean-up, optional model-based selection, estimator."""
    selector: Any = "passthrough"
    if select_features:
        base = (ExtraTreesClassifier if schema.task == "classification" else ExtraTreesRegressor)(
            n_estimators=50, max_depth=8, random_state=seed, n_jobs=1
        )
        selector = SelectFromModel(base, threshold="0.5*mean")
    return Pipeline([
        ("prep", preprocessor(schema)),
        ("clean", DropUninformative()),
        ("select", selector),
        ("model", estimator),
    ])


class CategoryCodes(BaseEstimator, TransformerMixin):
    """Each categorical column as the index of its value in the schema's categories (floats).

    The codes the gradient-boosted families split on natively (XGBoost's and LightGBM's
    categorical splits, not a one-hot). Values compare as text, as the schema records them
    and as serving receives them; a missing value, or one the schema does not list (an unseen
    level at serve time), is NaN: both libraries send it down the split's missing branch.
    The ONNX export writes one LabelEncoder per column (components/onnx_export.py).
    """

    def __init__(self, categories: list[list[str]] | None = None) -> None:
        self.categories = categories

    def fit(self, X: Any, y: Any = None) -> CategoryCodes:
        self.lookup_ = [{c: float(i) for i, c in enumerate(cats)} for cats in self.categories or []]
        return self

    def transform(self, X: Any) -> np.ndarray:
        values = _to_str(X)
        out = np.full(values.shape, np.nan)
        for j, lookup in enumerate(self.lookup_):
            out[:, j] = [lookup.get(v, np.nan) if v is not None else np.nan for v in values[:, j]]
        return out


def native_layout(schema: Schema) -> dict[str, list[str]]:
    """The columns of ``native_preprocessor``'s output, in order, by how a tree library reads them."""
    numeric = [c.name for c in schema.features if c.kind in ("numeric", "boolean")]
    categorical = [c.name for c in schema.features if c.kind == "categorical"]
    dates = [c.name for c in schema.features if c.kind == "datetime"]
    return {"numeric": numeric, "categorical": categorical, "datetime": dates}


def native_feature_types(schema: Schema) -> list[str]:
    """XGBoost's ``feature_types`` of ``native_preprocessor``'s output: ``q`` numeric, ``c`` categorical."""
    layout = native_layout(schema)
    return ["q"] * len(layout["numeric"]) + ["c"] * len(layout["categorical"]) + ["q"] * len(DATE_PARTS) * len(layout["datetime"])


def native_preprocessor(schema: Schema) -> ColumnTransformer:
    """Numbers as they are (missing stays missing: the tree libraries route it), categories as
    codes (``CategoryCodes``), date parts: the input of the gradient-boosted families."""
    layout = native_layout(schema)
    cats = [schema.column(c).categories or [] for c in layout["categorical"]]
    parts: list[tuple[str, Any, list[str]]] = []
    if layout["numeric"]:
        parts.append(("numeric", "passthrough", layout["numeric"]))
    if layout["categorical"]:
        parts.append(("categorical", CategoryCodes(cats), layout["categorical"]))
    if layout["datetime"]:
        parts.append(("datetime", FunctionTransformer(date_parts), layout["datetime"]))
    return ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)


def build_native(schema: Schema, estimator: Any) -> Pipeline:
    """The model of a gradient-boosted family: ``native_preprocessor`` then the estimator."""
    return Pipeline([("prep", native_preprocessor(schema)), ("model", estimator)])


def xy(frame: pd.DataFrame, schema: Schema) -> tuple[pd.DataFrame, pd.Series]:
    """The model's input columns and the target, in schema order."""
    return frame[schema.feature_names], frame[schema.target]
