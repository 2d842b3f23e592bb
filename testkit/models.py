"""Small real model versions for the serving tests, built with the project's own stages.

A classifier with numeric, categorical and date features (scikit-learn's wine data, with a
category and a date added) and an all-numeric regressor (the diabetes data). Each version
is written the way the register stage writes it, ONNX export included.
"""

from __future__ import annotations

import io
import json
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.datasets import load_diabetes, load_wine

from components.data import DatasetSpec, infer_schema
from components.package import package
from components.registry import Registry
from components.split import split
from components.train import make_model

LOGISTIC = {"family": "logistic", "params": {"C": 1.0}, "select": False}
LINEAR = {"family": "linear", "params": {"alpha": 1.0}, "select": False}


def wine_frame() -> pd.DataFrame:
    """Wine classes as strings, plus a categorical, a nullable numeric and a date feature."""
    data = load_wine(as_frame=True)
    frame = data.frame.rename(columns={"od280/od315_of_diluted_wines": "od280"})
    frame["target"] = frame["target"].map(lambda i: f"class_{i}")
    frame["region"] = pd.cut(frame["alcohol"], [0, 12.4, 13.4, 99], labels=["north", "centre", "south"]).astype(str)
    frame.loc[frame.index % 17 == 0, "magnesium"] = np.nan
    frame["harvest"] = pd.Timestamp("2020-01-01") + pd.to_timedelta(frame.index * 3, unit="D")
    return frame


def diabetes_frame() -> pd.DataFrame:
    return load_diabetes(as_frame=True).frame


def shop_frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Orders with an id, a timestamp, a boolean, a category, a sparse numeric and whether they came back."""
    rng = np.random.default_rng(seed)
    basket = rng.gamma(3.0, 20.0, n).round(2)
    member = rng.uniform(size=n) < 0.4
    channel = rng.choice(["web", "app", "store"], n)
    coupon = np.where(rng.uniform(size=n) < 0.7, np.nan, rng.uniform(0, 30, n).round(1))
    logit = -1.0 + 0.02 * (basket - 60) - 1.2 * member + (channel == "app") * 0.8
    returned = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-logit)), "returned", "kept")
    return pd.DataFrame({
        "order_id": [f"ORD-{seed:02d}-{i:07d}" for i in range(n)],
        "ordered_at": pd.Timestamp("2026-01-01") + pd.to_timedelta(np.arange(n) * 37, unit="min"),
        "basket": basket, "items": rng.integers(1, 9, n), "member": member, "channel": channel,
        "coupon": coupon, "returned": returned,
    })


def add_version(registry: Registry, frame: pd.DataFrame, target: str, candidate: dict[str, Any],
                promote: bool = True, seed: int = 0, onnx: bool = True, spec: DatasetSpec | None = None,
                manifest: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> str:
    """Fit, export and write one version (manifest last, with ``manifest``'s extra fields); promote it if asked.

    ``metrics``: the version's metrics.json (default: no holdout figures).
    """
    spec = spec or DatasetSpec(source="memory", target=target)
    schema = infer_schema(frame, spec)
    train, holdout = split(frame, schema, 0.25, seed)
    model = make_model(schema, candidate, seed)
    model.fit(train[schema.feature_names], train[target])
    files = {
        **package(model, train, holdout, schema, seed, onnx=onnx).files(),
        "schema.json": schema.to_json().encode(),
        "metrics.json": json.dumps(metrics or {"task": schema.task, "primary_metric": "none", "holdout": {}}).encode(),
    }
    version = registry.claim_version()
    registry.write_version(version, files, {"candidate": candidate, **(manifest or {})})
    if promote:
        registry.promote(version, "test")
    return version


def two_regressor_versions(registry: Registry) -> None:
    """Champion v2 with v1 as its predecessor: two linear regressors on the diabetes data."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(registry, diabetes_frame(), "target", LINEAR, onnx=False)
        add_version(registry, diabetes_frame(), "target", LINEAR, seed=1, onnx=False)


def unscorable_model() -> bytes:
    """A pickled model that loads but cannot score real data: it needs a column no holdout has."""
    from sklearn.compose import ColumnTransformer
    from sklearn.dummy import DummyClassifier
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(ColumnTransformer([("x", "passthrough", ["gone"])]), DummyClassifier())
    model.fit(pd.DataFrame({"gone": [0.0, 1.0]}), [0, 1])
    buf = io.BytesIO()
    joblib.dump(model, buf)
    return buf.getvalue()
