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
from collections.abc import Mapping
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
        except Exception as exc:  # noqa: BLE001 - skl2onnx raises many types for unsupported steps; the reason is recorded
            if data is None:
                report["reason"] = _unsupported_reason(model) or f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                return None, report
            break
        # the graph with standard ops first (where it has ai.onnx.ml nodes that have an exact
        # standard equivalent), then the converter's own graph: each is checked on its own
        standard, replaced = standard_ops(onx)
        graphs = [(standard, replaced)] if replaced else []
        for graph, ops in [*graphs, (onx, [])]:
            candidate = graph.SerializeToString()
            attempt: dict[str, Any] = {"converted": True, "precision": precision, "inputs": inputs,
                                       "opset": TARGET_OPSET, "standard_ops": ops}
            try:
                attempt.update(_compare(model, candidate, inputs, X_holdout, task))
            except Exception as exc:  # noqa: BLE001 - a model that converts but cannot run (onnxruntime's errors share no base) is not servable through ONNX; the reason is recorded
                attempt.update(passed=False,
                               reason=f"the ONNX model does not run: {type(exc).__name__}: {str(exc)[:300]}")
            data = candidate
            report.update(attempt)
            if attempt["passed"]:
                return data, report
    return data, report


def onnx_feed(columns: pd.DataFrame | Mapping[str, Any], inputs: dict[str, str], types: dict[str, str]) -> dict[str, np.ndarray]:
    """The onnxruntime input dict for feature columns: a frame, or a mapping of arrays (shared with serving)."""
    feed = {}
    for name, column in inputs.items():
        col = np.asarray(columns[column])
        if "string" in types[name]:
            text = col.astype(object)  # a copy: the caller's column keeps its nulls
            text[pd.isna(text)] = ""
            feed[name] = text.astype(str).reshape(-1, 1)
        elif "double" in types[name]:
            feed[name] = col.astype(np.float64, copy=False).reshape(-1, 1)
        else:
            feed[name] = col.astype(np.float32).reshape(-1, 1)
    return feed


def standard_ops(onx: Any) -> tuple[Any, list[str]]:
    """A copy of ``onx`` with its float32 ai.onnx.ml Scaler and LinearRegressor nodes in standard ops.

    onnxruntime's Scaler kernel runs element by element; the same arithmetic in standard ops
    runs vectorised, and a Scaler that feeds a LinearRegressor folds into its coefficients:

        Scaler                     Y = (X - offset) * scale                 -> Sub, Mul
        LinearRegressor            Y = X @ coefficients^T + intercepts      -> Gemm
        Scaler -> LinearRegressor  Y = X @ (scale * coefficients^T) + (intercepts - (offset * scale) @ coefficients^T)
                                                                            -> Gemm

    (the folded constants computed in float64, then rounded to float32 as the graph's are).
    Identity nodes are dropped. Imputer stays: its kernel is faster than IsNaN/Where. A node is
    left as it is when its input is not float32 (these operators output float32 whatever the
    input, so a rewrite would change types) or uses an option not listed here. The result is
    checked against scikit-learn like any export (``export_onnx``). Returns the graph and the
    operators replaced (empty: ``onx`` itself).
    """
    import copy

    import onnx
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    types = _elem_types(shape_inference.infer_shapes(onx))
    out = copy.deepcopy(onx)
    graph = out.graph
    outputs = {o.name for o in graph.output}
    # Identity nodes: their consumers read the input instead
    alias: dict[str, str] = {}
    kept = []
    for node in graph.node:
        node.input[:] = [alias.get(i, i) for i in node.input]
        if node.op_type == "Identity" and node.domain == "" and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    consumers: dict[str, list[Any]] = {}
    for node in kept:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    constants: list[Any] = []
    replaced = ["Identity"] * (len(graph.node) - len(kept))

    def const(name: str, values: Any) -> str:
        constants.append(numpy_helper.from_array(np.asarray(values, dtype=np.float32), f"{name}_std{len(constants)}"))
        return constants[-1].name

    def attrs(node: Any) -> dict[str, Any]:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def linear(node: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """(coefficients as F x targets, intercepts) of a plain LinearRegressor, else None."""
        a = attrs(node)
        if node.domain != "ai.onnx.ml" or node.op_type != "LinearRegressor" or \
                a.get("post_transform", b"NONE") not in (b"NONE", "NONE"):
            return None
        targets = int(a.get("targets", 1))
        coefficients = np.asarray(a.get("coefficients", []), dtype=np.float64)
        intercepts = np.asarray(list(a.get("intercepts", [])) or [0.0] * targets, dtype=np.float64)
        if not coefficients.size or coefficients.size % targets or len(intercepts) != targets:
            return None
        return coefficients.reshape(targets, -1).T, intercepts

    nodes: list[Any] = []
    folded: set[int] = set()
    for node in kept:
        if id(node) in folded:
            continue
        x, y = (node.input[0] if node.input else ""), (node.output[0] if node.output else "")
        if node.domain != "ai.onnx.ml" or types.get(x) != TensorProto.FLOAT:
            nodes.append(node)
            continue
        a = attrs(node)
        if node.op_type == "Scaler" and a.get("scale") and a.get("offset"):
            offset = np.asarray(a["offset"], dtype=np.float64)
            scale = np.asarray(a["scale"], dtype=np.float64)
            after = consumers.get(y, [])
            fit = linear(after[0]) if len(after) == 1 and y not in outputs else None
            if fit is not None and len(scale) in (1, fit[0].shape[0]) and len(offset) in (1, fit[0].shape[0]):
                w, b = fit
                w2 = np.broadcast_to(scale, (w.shape[0],))[:, None] * w
                b2 = b - (np.broadcast_to(offset * scale, (w.shape[0],)) @ w)
                nodes.append(helper.make_node("Gemm", [x, const(f"{y}_coefficients", w2), const(f"{y}_intercepts", b2)],
                                              [after[0].output[0]]))
                folded.add(id(after[0]))
                replaced += ["Scaler", "LinearRegressor"]
                continue
            shifted = f"{y}_std_shifted"
            nodes += [helper.make_node("Sub", [x, const(f"{y}_offset", offset)], [shifted]),
                      helper.make_node("Mul", [shifted, const(f"{y}_scale", scale)], [y])]
            replaced.append("Scaler")
            continue
        fit = linear(node)
        if fit is not None:
            nodes.append(helper.make_node("Gemm", [x, const(f"{y}_coefficients", fit[0]), const(f"{y}_intercepts", fit[1])],
                                          [y]))
            replaced.append("LinearRegressor")
            continue
        nodes.append(node)
    if not replaced:
        return onx, []
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    onnx.checker.check_model(out)
    return out, replaced


def _elem_types(inferred: Any) -> dict[str, int]:
    """Element type of every tensor; onnx infers none for ai.onnx.ml outputs, so those are added here."""
    from onnx import TensorProto

    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
             if v.type.tensor_type.elem_type}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    same = {"Imputer", "Identity", "Gather", "Compress", "Concat"}
    for node in inferred.graph.node:  # in graph order: each node's inputs are typed before it
        for y in node.output:
            if y in types or not node.input:
                continue
            if node.op_type in same and node.input[0] in types:
                types[y] = types[node.input[0]]
            elif node.domain == "ai.onnx.ml" and node.op_type in ("Scaler", "LinearRegressor", "Normalizer"):
                types[y] = TensorProto.FLOAT
    return types


def _unsupported_reason(model: Any) -> str | None:
    from sklearn.preprocessing import FunctionTransformer

    for path, step in _walk(model, ""):
        if isinstance(step, FunctionTransformer) and step.func is not None:  # func None: a passthrough
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
    """Teach skl2onnx the project's own steps and the gradient-boosted libraries' estimators.

    The column-dropping step is a Compress of the kept columns; the categorical codes are one
    LabelEncoder per column; XGBoost and LightGBM convert with onnxmltools' converters, which
    write their categorical splits as equality branches.
    """
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.algebra.onnx_ops import OnnxCompress, OnnxConcat, OnnxIdentity, OnnxLabelEncoder

    from components.features import CategoryCodes, DropUninformative

    def keep_shape(operator: Any) -> None:
        n = operator.inputs[0].get_first_dimension()
        operator.outputs[0].type = operator.inputs[0].type.__class__([n, int(np.sum(operator.raw_operator.keep_))])

    def keep_convert(scope: Any, operator: Any, container: Any) -> None:
        # the kept columns as a boolean mask: Compress copies whole row spans, where a Gather on
        # axis 1 copied value by value (9 ms of 14 for 100k rows x 12 features); nothing dropped
        # is an Identity, which onnxruntime removes
        keep = np.asarray(operator.raw_operator.keep_, dtype=bool)
        if keep.all():
            node = OnnxIdentity(operator.inputs[0], op_version=container.target_opset, output_names=operator.outputs[:1])
        else:
            node = OnnxCompress(operator.inputs[0], keep, axis=1, op_version=container.target_opset,
                                output_names=operator.outputs[:1])
        node.add_to(scope, container)

    update_registered_converter(DropUninformative, "FlywheelDropUninformative", keep_shape, keep_convert)

    def codes_shape(operator: Any) -> None:
        from skl2onnx.common.data_types import FloatTensorType

        n = operator.inputs[0].get_first_dimension()
        width = sum(i.type.shape[1] for i in operator.inputs)
        operator.outputs[0].type = FloatTensorType([n, width])

    def codes_convert(scope: Any, operator: Any, container: Any) -> None:
        # the categorical columns arrive as one [N, k] string tensor (the ColumnTransformer joins its
        # inputs): each column is taken out and mapped by its own LabelEncoder; a value not in the
        # schema's categories, and the empty string a missing value is fed as, map to NaN: the
        # tree's missing branch, as in scikit-learn
        from skl2onnx.algebra.onnx_ops import OnnxArrayFeatureExtractor

        opv = container.target_opset
        cats = operator.raw_operator.categories
        columns, j = [], 0
        for var in operator.inputs:
            for k in range(var.type.shape[1]):
                column = var if var.type.shape[1] == 1 else OnnxArrayFeatureExtractor(
                    var, np.array([k], dtype=np.int64), op_version=opv)
                columns.append(OnnxLabelEncoder(column, keys_strings=[str(c) for c in cats[j]],
                                                values_floats=[float(i) for i in range(len(cats[j]))],
                                                default_float=float("nan"), op_version=2))  # ai.onnx.ml 2: string keys, float values
                j += 1
        out = columns[0] if len(columns) == 1 else OnnxConcat(*columns, axis=1, op_version=opv)
        OnnxIdentity(out, op_version=opv, output_names=operator.outputs[:1]).add_to(scope, container)

    update_registered_converter(CategoryCodes, "FlywheelCategoryCodes", codes_shape, codes_convert)

    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from xgboost import XGBRegressor

    from components.gbt import FlywheelXGBClassifier, LightGBMBoosterClassifier, LightGBMBoosterRegressor

    classifier = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    update_registered_converter(FlywheelXGBClassifier, "FlywheelXGBClassifier", calculate_linear_classifier_output_shapes,
                                convert_xgboost, options=classifier)
    update_registered_converter(XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes,
                                convert_xgboost)
    update_registered_converter(LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
                                convert_lightgbm, options=classifier)
    update_registered_converter(LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes,
                                convert_lightgbm, options={"split": None})
    update_registered_converter(LightGBMBoosterClassifier, "FlywheelLightGBMBoosterClassifier",
                                calculate_linear_classifier_output_shapes, convert_lightgbm, options=classifier)
    update_registered_converter(LightGBMBoosterRegressor, "FlywheelLightGBMBoosterRegressor",
                                calculate_linear_regressor_output_shapes, convert_lightgbm, options={"split": None})
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
