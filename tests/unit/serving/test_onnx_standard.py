"""The ONNX export's standard-op graph for linear pipelines: what it replaces, and that it stays exact."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import numpy_helper

from components import onnx_export
from components.data import DatasetSpec, infer_schema
from components.onnx_export import export_onnx, onnx_feed, standard_ops
from components.split import split
from components.train import make_model
from testkit.models import LINEAR


def _frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Numeric features with nulls (the imputer works) and a duplicate (dropped by the model)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=(n, 5))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(5)])
    frame.loc[frame.index % 7 == 0, "x1"] = np.nan
    frame["copy"] = frame["x3"]
    frame["y"] = x @ np.array([1.5, -2.0, 0.5, 3.0, 0.0]) + rng.normal(0, 0.3, n)
    return frame


def _fitted(frame: pd.DataFrame) -> tuple[Any, pd.DataFrame]:
    schema = infer_schema(frame, DatasetSpec("memory", "y"))
    train, holdout = split(frame, schema, 0.25, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_model(schema, LINEAR, 0).fit(train[schema.feature_names], train["y"])
    return model, holdout[schema.feature_names]


def _run(data: bytes, rows: pd.DataFrame) -> np.ndarray:
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    types = {i.name: i.type for i in sess.get_inputs()}
    return np.asarray(sess.run(None, onnx_feed(rows, {c: c for c in types}, types))[0], dtype=np.float64).ravel()


def _ops(data: bytes) -> set[tuple[str, str]]:
    return {(n.domain, n.op_type) for n in onnx.load_from_string(data).graph.node}


def test_linear_export_is_standard_ops_and_agrees_with_sklearn() -> None:
    model, holdout = _fitted(_frame())
    assert not model.named_steps["clean"].keep_.all(), "the frame must make the model drop columns"
    data, report = export_onnx(model, holdout, "regression")
    assert report["passed"] and report["standard_ops"] == ["Scaler", "LinearRegressor"], report
    ops = _ops(data)
    assert ("ai.onnx.ml", "Scaler") not in ops and ("ai.onnx.ml", "LinearRegressor") not in ops
    assert {("", "Gemm"), ("", "Compress"), ("ai.onnx.ml", "Imputer")} <= ops
    # fresh rows, nulls in every feature: the served graph predicts what scikit-learn predicts
    rows = _frame(3000, seed=1).drop(columns="y")
    rows = rows.mask(np.random.default_rng(2).uniform(size=rows.shape) < 0.1)
    want = model.predict(rows)
    np.testing.assert_allclose(_run(data, rows), want, rtol=0, atol=1e-4 * max(1.0, float(np.std(want))))


def test_nothing_dropped_is_an_identity_not_a_gather() -> None:
    model, holdout = _fitted(_frame().drop(columns="copy"))
    assert model.named_steps["clean"].keep_.all()
    data, report = export_onnx(model, holdout, "regression")
    assert report["passed"]
    assert not {op for _, op in _ops(data)} & {"Gather", "Compress", "Identity"}


def test_a_standard_graph_that_disagrees_falls_back_to_the_converters_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    model, holdout = _fitted(_frame())
    real = standard_ops

    def off_by_one(onx: Any) -> tuple[Any, list[str]]:
        out, replaced = real(onx)
        for t in out.graph.initializer:
            if "intercepts" in t.name:
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 1.0, t.name))
        return out, replaced

    monkeypatch.setattr(onnx_export, "standard_ops", off_by_one)
    data, report = export_onnx(model, holdout, "regression")
    assert report["passed"] and report["standard_ops"] == [], report
    assert ("ai.onnx.ml", "LinearRegressor") in _ops(data)
    np.testing.assert_allclose(_run(data, holdout), model.predict(holdout), atol=1e-3)


def test_a_double_graph_is_left_as_it_is() -> None:
    model, holdout = _fitted(_frame())
    onx, _ = onnx_export._convert(model, holdout, "regression", double=True)
    out, replaced = standard_ops(onx)
    assert out is onx and replaced == []
