"""A regressor that answers one odd value: the fault of a record the prediction log cannot serialise.

It wraps a real fitted pipeline and answers the integer 2**70 (valid JSON, but more than a
Parquet int64 column holds) for rows whose ``age`` is above ``TRIGGER``; every other row gets
the pipeline's float. The serving process unpickles it from this module (the project root is
on its path), exactly as it would a user's own estimator.
"""

from __future__ import annotations

import io
import json
from typing import Any

import joblib
import numpy as np
import pandas as pd

from components.data import DatasetSpec, infer_schema
from components.package import reference_sample
from components.registry import Registry
from components.split import split
from components.train import make_model

TRIGGER = 1e5
ODD_VALUE = 2**70
LINEAR = {"family": "linear", "params": {"alpha": 1.0}, "select": False}


class OddRegressor:
    """A fitted pipeline whose prediction for a triggering row is an int no Parquet column holds."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        values = np.asarray(self.inner.predict(frame), dtype=float)
        odd = frame["age"].to_numpy(dtype=float) > TRIGGER
        if not odd.any():
            return values
        out = values.astype(object)
        out[odd] = ODD_VALUE
        return out


def add_odd_version(registry: Registry, frame: pd.DataFrame, target: str = "target") -> str:
    """Fit, wrap and register (and promote) one OddRegressor version, the way register writes one."""
    schema = infer_schema(frame, DatasetSpec(source="memory", target=target))
    train, _ = split(frame, schema, 0.25, 0)
    inner = make_model(schema, LINEAR, 0)
    inner.fit(train[schema.feature_names], train[target])
    model = OddRegressor(inner)
    buf, ref = io.BytesIO(), io.BytesIO()
    joblib.dump(model, buf)
    reference_sample(model, train, schema, 0).to_parquet(ref, index=False)
    files = {"model.joblib": buf.getvalue(), "schema.json": schema.to_json().encode(),
             "metrics.json": json.dumps({"task": schema.task, "primary_metric": "none", "holdout": {}}).encode(),
             "reference.parquet": ref.getvalue()}
    version = registry.claim_version()
    registry.write_version(version, files, {"candidate": LINEAR})
    registry.promote(version, "fault: a model with an odd answer")
    return version
