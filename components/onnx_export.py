"""ONNX export of a registered model, checked against scikit-learn on the holdout.

Called when the refit stage packages the model (components/package.py). The pipeline is
converted with skl2onnx, one ONNX input per feature (numbers as float32, categories as
strings), then ONNX and scikit-learn predict the same holdout rows; the export is marked
``passed`` only when they agree within the stated tolerance. Serving uses onnxruntime only
for a passed export. Pipelines with steps ONNX cannot express (the date-part
FunctionTransformer, for one) are reported as ``converted: false`` with the reason; that is
expected, not an error.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("flywheel.onnx")

CHECK_ROWS = 2000
PROBA_TOLERANCE = 1e-3  # max |p_onnx - p_sklearn| on any class probability
AGREEMENT_TOLERANCE = 0.999  # share of holdout rows with the same predicted class
REGRESSION_RTOL = 1e-3  # max |y_onnx - y_sklearn| relative to max(1, std of y_sklearn)
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def export_onnx(model: Any, X_holdout: pd.DataFrame, task: str) -> tuple[bytes | None, dict[str, Any]]:
    """Convert ``model`` to ONNX and compare it with scikit-learn on ``X_holdout``.

    Returns the ONNX bytes (None when conversion fails) and a report:
    ``converted``, ``passed``, ``tolerance``, ``max_abs_diff`` (and ``agreement`` for
    classifiers), ``rows_checked``, ``inputs`` (ONNX input name -> column) and ``reason``.
    """
    report: dict[str, Any] = {"converted": False, "passed": False, "task": task}
    data: bytes | None = None
    # float32 first (fastest); tree thresholds compared in float32 can flip rows, so a
    # failed check is retried with the whole graph in float64
    for precision in ("float32", "float64"):
        try:
            onx, inputs = _convert(model, X_holdout, task, double=precision == "float64")
        except Exception as exc:  # skl2onnx raises many types for unsupported steps
            if data is None:
                report["reason"] = _unsupported_reason(model) or f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                return None, report
            break
        candidate = onx.SerializeToString()
        attempt: dict[str, Any] = {"converted": True, "precision": precision, "inputs": inputs, "opset": TARGET_OPSET}
        try:
            attempt.update(_compare(model, candidate, inputs, X_holdout, task))
        except Exception as exc:  # a model that converts but cannot run is not servable through ONNX
            attempt.update(passed=False, reason=f"the ONNX model does not run: {type(exc).__name__}: {str(exc)[:300]}")
        data = candidate
        report.update(attempt)
        if attempt["passed"]:
            break
    return data, report


def onnx_feed(frame: pd.DataFrame, inputs: dict[str, str], types: dict[str, str]) -> dict[str, np.ndarray]:
    """The onnxruntime input dict for a frame of feature columns (shared with serving)."""
    feed = {}
    for name, column in inputs.items():
        col = frame[column]
        if "string" in types[name]:
            feed[name] = col.astype(object).where(col.notna(), "").astype(str).to_numpy().reshape(-1, 1)
        elif "double" in types[name]:
            feed[name] = col.to_numpy(dtype=np.float64).reshape(-1, 1)
        else:
            feed[name] = col.to_numpy(dtype=np.float32).reshape(-1, 1)
    return feed


def _unsupported_reason(model: Any) -> str | None:
    from sklearn.preprocessing import FunctionTransformer

    for path, step in _walk(model, ""):
        if isinstance(step, FunctionTransformer):
            fn = getattr(step.func, "__name__", "a function")
            return f"step {path} is FunctionTransformer({fn}), a Python function with no ONNX equivalent"
    return None


def _walk(obj: Any, path: str) -> Any:
    yield path or "model", obj
    for name, step in getattr(obj, "steps", []) or []:
        yield from _walk(step, f"{path}/{name}" if path else name)
    for name, step, _cols in getattr(obj, "transformers_", getattr(obj, "transformers", [])) or []:
        if not isinstance(step, str):
            yield from _walk(step, f"{path}/{name}" if path else name)


def _convert(model: Any, X: pd.DataFrame, task: str, double: bool = False) -> tuple[Any, dict[str, str]]:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    number = DoubleTensorType if double else FloatTensorType
    _register_converters()
    initial, inputs = [], {}
    for col in X.columns:
        s = X[col]
        if pd.api.types.is_datetime64_any_dtype(s):
            kind = StringTensorType([None, 1])  # will fail in the converter, with its reason
        elif pd.api.types.is_numeric_dtype(s):
            kind = number([None, 1])
        else:
            kind = StringTensorType([None, 1])
        initial.append((str(col), kind))
        inputs[str(col)] = col
    plain = _without_passthrough(model)
    options = None
    if task == "classification":
        final = plain.steps[-1][1] if hasattr(plain, "steps") else plain
        options = {id(final): {"zipmap": False}}
    onx = to_onnx(plain, initial_types=initial, options=options, target_opset=TARGET_OPSET)
    return onx, inputs


def _without_passthrough(model: Any) -> Any:
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline):
        steps = [(n, s) for n, s in model.steps if s is not None and s != "passthrough"]
        if len(steps) != len(model.steps):
            return Pipeline(steps)
    return model


_registered = False


def _register_converters() -> None:
    """Teach skl2onnx the project's own column-dropping step (a Gather on kept columns)."""
    global _registered
    if _registered:
        return
    try:
        from components.features import DropUninformative
    except ImportError:  # the step may be renamed; conversion then reports it as unsupported
        _registered = True
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.algebra.onnx_ops import OnnxGather

    def shape(operator: Any) -> None:
        n = operator.inputs[0].get_first_dimension()
        operator.outputs[0].type = operator.inputs[0].type.__class__([n, int(np.sum(operator.raw_operator.keep_))])

    def convert(scope: Any, operator: Any, container: Any) -> None:
        keep = np.flatnonzero(operator.raw_operator.keep_).astype(np.int64)
        node = OnnxGather(operator.inputs[0], keep, axis=1, op_version=container.target_opset,
                          output_names=operator.outputs[:1])
        node.add_to(scope, container)

    update_registered_converter(DropUninformative, "FlywheelDropUninformative", shape, convert)
    _registered = True


def _compare(model: Any, data: bytes, inputs: dict[str, str], X: pd.DataFrame, task: str) -> dict[str, Any]:
    import onnxruntime as ort

    rows = X.head(CHECK_ROWS)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    types = {i.name: i.type for i in sess.get_inputs()}
    out = sess.run(None, onnx_feed(rows, inputs, types))
    result: dict[str, Any] = {"rows_checked": len(rows), "onnxruntime": ort.__version__}
    if task == "classification":
        want = np.asarray(model.predict_proba(rows), dtype=np.float64)
        got = np.asarray(out[1], dtype=np.float64)
        diff = float(np.max(np.abs(got - want))) if len(rows) else 0.0
        labels = np.asarray(model.classes_)[got.argmax(axis=1)]
        agreement = float(np.mean(labels == model.predict(rows))) if len(rows) else 1.0
        passed = diff <= PROBA_TOLERANCE and agreement >= AGREEMENT_TOLERANCE
        result.update(max_abs_diff=diff, agreement=agreement,
                      tolerance={"max_abs_diff": PROBA_TOLERANCE, "agreement": AGREEMENT_TOLERANCE})
        why = f"probabilities differ by up to {diff:.2e} (tolerance {PROBA_TOLERANCE}), labels agree on {agreement:.2%}"
    else:
        want = np.asarray(model.predict(rows), dtype=np.float64).ravel()
        got = np.asarray(out[0], dtype=np.float64).ravel()
        diff = float(np.max(np.abs(got - want))) if len(rows) else 0.0
        tol = REGRESSION_RTOL * max(1.0, float(np.std(want)) if len(rows) else 1.0)
        passed = diff <= tol
        result.update(max_abs_diff=diff, tolerance=tol)
        why = f"predictions differ by up to {diff:.3g} (tolerance {tol:.3g})"
    result["passed"] = bool(passed)
    result["reason"] = ("ONNX agrees with scikit-learn: " if passed else "ONNX disagrees with scikit-learn: ") + why
    return result
