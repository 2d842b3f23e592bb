"""The model runtime: a registry version loaded as scikit-learn or ONNX, and the one rule for
whether it can serve.

``load_version`` builds a ``LoadedModel`` (validator from the schema, scikit-learn or ONNX
runtime) and refuses it unless a smoke prediction on the version's reference rows succeeds
and agrees with the predictions recorded at registration. The server loads every version
through it (services/serving/holder.py), and the deploy step asks ``serving_problem``, which
is the same call: a version the deploy step accepts is one the server serves, and the other
way round.

The rule is the server's: the runtime it would serve (ONNX first when preferred, scikit-learn
when ONNX is missing or fails), with a tolerance that ONNX's float32 arithmetic meets: at
least 95% of class labels as registered, regression values within 1e-3 of the registered
ones' spread. An exact comparison would refuse ONNX exports that serve correctly.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Union

import numpy as np
import pandas as pd

from components.data import PREDICTION, Schema
from components.onnx_export import onnx_feed
from components.registry import Registry
from components.store import NotFound
from components.validation import Validator
from services.serving.log_encoding import log_types

log = logging.getLogger("flywheel.serving")
SMOKE_ROWS = 32
# What a runtime predicts: a frame of feature columns, or the columns themselves (one array per feature)
Features = Union[pd.DataFrame, Mapping[str, np.ndarray]]


class ModelRefused(RuntimeError):
    """A version cannot serve: it fails to load or its smoke prediction fails."""


@dataclass(frozen=True)
class Prediction:
    """Model output for a batch of rows, in row order."""

    values: np.ndarray  # class labels or regression values
    proba: np.ndarray | None  # rows x classes, classifiers only


def score_frame(model: Any, frame: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (and class probabilities) of a scikit-learn pipeline; preprocessing runs once."""
    steps = getattr(model, "steps", None)
    x = model[:-1].transform(frame) if steps and len(steps) > 1 else frame
    est = steps[-1][1] if steps else model
    if task == "classification" and hasattr(est, "predict_proba") and hasattr(est, "classes_"):
        # the label is the most probable class: one pass over the estimator instead of two
        proba = est.predict_proba(x)
        return np.asarray(est.classes_)[proba.argmax(axis=1)], proba
    return np.asarray(est.predict(x)), None


def records_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of a frame as JSON-like records (missing as None, dates as ISO strings)."""
    out = frame.copy()
    for col in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[col]):
            out[col] = out[col].map(lambda t: None if pd.isna(t) else t.isoformat())
    out = out.astype(object).where(out.notna(), None)
    return out.to_dict("records")


class SklearnRuntime:
    """The pickled scikit-learn pipeline; preprocessing runs once for predict and predict_proba."""

    name = "sklearn"

    def __init__(self, model: Any, task: str) -> None:
        self.model = model
        self.task = task
        self.classes = list(getattr(model, "classes_", [])) if task == "classification" else None

    def predict(self, features: Features) -> Prediction:
        frame = features if isinstance(features, pd.DataFrame) else pd.DataFrame(features, copy=False)
        return Prediction(*score_frame(self.model, frame, self.task))


class OnnxRuntime:
    """The ONNX export of the same pipeline, through onnxruntime (one input per feature)."""

    name = "onnx"

    def __init__(self, onnx_bytes: bytes, report: dict[str, Any], schema: Schema, classes: list[Any] | None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # one request batch at a time; threads would fight the HTTP loop
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        self.task = schema.task
        self.classes = classes
        self.inputs = report.get("inputs") or {i.name: i.name for i in self.session.get_inputs()}
        self._types = {i.name: i.type for i in self.session.get_inputs()}
        self._outputs = [o.name for o in self.session.get_outputs()]

    def predict(self, features: Features) -> Prediction:
        out = self.session.run(None, onnx_feed(features, self.inputs, self._types))
        if self.task == "classification":
            proba = np.asarray(out[1], dtype=np.float64) if len(out) > 1 else None
            values = np.asarray(out[0]).ravel()
            if self.classes is not None and proba is not None:
                values = np.asarray(self.classes, dtype=object)[proba.argmax(axis=1)]
                values = values.astype(np.asarray(self.classes).dtype)
            return Prediction(values, proba)
        return Prediction(np.asarray(out[0], dtype=np.float64).ravel(), None)


@dataclass(frozen=True)
class LoadedModel:
    """One version ready to answer: its schema, validator and runtime."""

    version: str
    schema: Schema
    validator: Validator
    runtime: Any  # SklearnRuntime | OnnxRuntime
    fallback_reason: str | None = None  # why ONNX is not used, when it is not

    @property
    def runtime_name(self) -> str:
        return self.runtime.name

    @property
    def classes(self) -> list[Any] | None:
        return self.runtime.classes

    @cached_property
    def log_types(self) -> dict[str, Any]:
        """The Arrow type of each column the prediction log records for this version (its schema's)."""
        return log_types(self.schema)

    def predict(self, features: Features) -> Prediction:
        """Predict a frame, or the columns of one (``Checked.columns``: no frame is built for ONNX)."""
        return self.runtime.predict(features)


def prefers_onnx(settings: Any) -> bool:
    """Whether the server tries a version's ONNX export first (the ``serving_runtime`` setting)."""
    return settings.serving_runtime != "sklearn"


def serving_problem(registry: Registry, version: str, prefer_onnx: bool = True) -> str | None:
    """Why ``version`` cannot serve, or None when it can: the server's own ``load_version``, nothing else."""
    try:
        load_version(registry, version, prefer_onnx)
    except ModelRefused as exc:
        return str(exc)
    return None


def load_version(registry: Registry, version: str, prefer_onnx: bool = True, strict_fields: bool = False) -> LoadedModel:
    """Load and smoke-test a version; raise ModelRefused saying why it cannot serve."""
    try:
        schema = registry.schema(version)
        model = registry.load_model(version)
    except Exception as exc:  # a corrupt pickle raises anything
        raise ModelRefused(f"version {version} of {registry.model} cannot be loaded: {exc}") from exc
    validator = Validator(schema, strict_fields=strict_fields)
    sk = SklearnRuntime(model, schema.task)
    reference = _reference(registry, version)
    fallback = None
    if prefer_onnx:
        onnx, fallback = _onnx_runtime(registry, version, schema, sk.classes)
        if onnx is not None:
            candidate = LoadedModel(version, schema, validator, onnx)
            try:
                smoke_test(candidate, reference)
                return candidate
            except ModelRefused as exc:
                fallback = f"ONNX runtime failed its smoke test ({exc}); serving scikit-learn"
                log.warning("version %s: %s", version, fallback)
    loaded = LoadedModel(version, schema, validator, sk, fallback)
    smoke_test(loaded, reference)
    return loaded


def _optional(registry: Registry, version: str, name: str) -> bytes | None:
    """A file a version may lack (None); a store that fails to read it refuses the version, to be retried."""
    try:
        return registry.read(version, name)
    except NotFound:
        return None
    except Exception as exc:  # S3's errors, a streamed body's timeout, the disk: the store failed, not the version
        raise ModelRefused(f"{name} of version {version} cannot be read from the store: {exc}") from exc


def _reference(registry: Registry, version: str) -> pd.DataFrame | None:
    data = _optional(registry, version, "reference.parquet")
    if data is None:
        log.warning("version %s has no reference.parquet; smoke test uses a synthetic record", version)
        return None
    try:
        return pd.read_parquet(io.BytesIO(data))
    except (ValueError, OSError) as exc:  # not Parquet (pyarrow's ArrowInvalid is a ValueError)
        log.warning("version %s has an unreadable reference.parquet (%s); smoke test uses a synthetic record", version, exc)
        return None


def _onnx_runtime(registry: Registry, version: str, schema: Schema,
                  classes: list[Any] | None) -> tuple[OnnxRuntime | None, str | None]:
    data = _optional(registry, version, "onnx.json")
    if data is None:
        return None, "no ONNX export for this version"
    try:
        report = json.loads(data)
    except ValueError as exc:  # not JSON, or not UTF-8
        return None, f"onnx.json of version {version} is not valid JSON ({exc}); serving scikit-learn"
    if not isinstance(report, dict):
        return None, f"onnx.json of version {version} holds no JSON object; serving scikit-learn"
    if not (report.get("converted") and report.get("passed", report.get("converted"))):
        return None, f"ONNX export not used: {report.get('reason', 'the check did not pass')}"
    onnx = _optional(registry, version, "model.onnx")
    if onnx is None:
        return None, f"onnx.json of version {version} says converted, but it has no model.onnx; serving scikit-learn"
    try:
        return OnnxRuntime(onnx, report, schema, classes), None
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no base class; scikit-learn serves, with the reason
        return None, f"ONNX model cannot be loaded ({exc}); serving scikit-learn"


def smoke_records(schema: Schema, reference: pd.DataFrame | None) -> list[dict[str, Any]]:
    """A few JSON-like records to try a model on: reference rows, else one synthetic row."""
    if reference is not None and set(schema.feature_names) <= set(reference.columns) and len(reference):
        return records_of(reference[schema.feature_names].head(SMOKE_ROWS))
    row: dict[str, Any] = {}
    for c in schema.features:
        if c.kind == "categorical":
            row[c.name] = (c.categories or ["x"])[0]
        elif c.kind == "datetime":
            row[c.name] = pd.Timestamp(c.min or 0, unit="s").isoformat()
        else:
            row[c.name] = float(((c.min or 0.0) + (c.max or 0.0)) / 2)
    return [row]



def smoke_test(model: LoadedModel, reference: pd.DataFrame | None) -> None:
    """Predict on reference rows; refuse a model that fails, or disagrees with its registration."""
    records = smoke_records(model.schema, reference)
    try:
        rows = model.validator.check_records(records)
        if not len(rows):
            raise ModelRefused(f"no reference row passes the version's own schema ({rows.problems[0]})")
        pred = model.predict(rows.frame)
    except ModelRefused:
        raise
    except Exception as exc:
        raise ModelRefused(f"smoke prediction of {model.version} ({model.runtime_name}) failed: {exc}") from exc
    values = pred.values
    if len(values) != len(rows):
        raise ModelRefused(f"smoke prediction returned {len(values)} values for {len(rows)} rows")
    if model.schema.task == "regression":
        if not np.all(np.isfinite(values.astype(float))):
            raise ModelRefused("smoke prediction returned non-finite values")
    elif pred.proba is not None and not np.allclose(pred.proba.sum(axis=1), 1.0, atol=1e-3):
        raise ModelRefused("smoke prediction probabilities do not sum to 1")
    if reference is not None and PREDICTION in reference.columns and len(reference) >= len(records):
        expected = reference[PREDICTION].to_numpy()[rows.frame.index.to_numpy()]
        _agrees(model, values, expected)


def _agrees(model: LoadedModel, got: np.ndarray, expected: np.ndarray) -> None:
    if model.schema.task == "regression":
        scale = max(1.0, float(np.nanstd(expected.astype(float))))
        diff = float(np.nanmax(np.abs(got.astype(float) - expected.astype(float))))
        if diff > 1e-3 * scale:
            raise ModelRefused(f"smoke predictions differ from the registered ones by {diff:.3g}")
    else:
        agree = float(np.mean([str(a) == str(b) for a, b in zip(got, expected, strict=True)]))
        if agree < 0.95:
            raise ModelRefused(f"smoke predictions agree with the registered ones on only {agree:.0%} of rows")
