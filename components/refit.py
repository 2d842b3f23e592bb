"""Refit within a memory budget: the chosen candidate on all training rows, in a task's memory.

Before anything is read, ``plan`` estimates from the Parquet metadata (rows, column types) what
the refit would hold: the training frame, the model matrix, and what the family itself builds
(a random forest's trees grow with the rows; a boosted model's binned matrix does not). Then:

* it fits the budget: the refit reads the frame and fits as the search did;
* an XGBoost candidate that does not: trained from Parquet batches through XGBoost's external
  memory (``ExtMemQuantileDMatrix`` over a ``DataIter``; its pages in a temporary directory), so
  the task holds one batch and the quantised pages, not the table;
* any other family that does not: refused with one sentence naming the family, the estimate and
  the budget, before training starts.

The estimates are deliberately coarse (bytes per value and per tree node as measured on the
churn table, stated below); they decide between in memory, streamed, or refused.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from components.settings import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from components.data import Schema

MB = 1_000_000
NUMBER_BYTES = 8  # a float64 in pandas and in the model matrix
TEXT_BYTES = 64  # a short Python string in an object column: the object and its pointer
TREE_NODE_BYTES = 120  # a scikit-learn tree node (the node record and its value array, two classes)
INTERPRETER_MB = 400  # the interpreter with pandas, scikit-learn and the libraries imported
STREAM_BATCH_ROWS = 100_000  # rows per Parquet batch handed to XGBoost's external memory


class MemoryBudgetError(ConfigError):
    """The refit of a candidate would not fit the ``refit_memory_mb`` budget; the message says which and why."""


@dataclass(frozen=True)
class MemoryPlan:
    """How the refit of one candidate runs within the budget."""

    family: str
    rows: int
    estimated_mb: float  # in memory, as the search fits it
    budget_mb: float
    streamed: bool  # XGBoost from Parquet batches (external memory)

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "rows": self.rows, "estimated_mb": round(self.estimated_mb),
                "budget_mb": self.budget_mb, "mode": "external-memory" if self.streamed else "in-memory"}


def frame_mb(path: str, schema: Schema) -> tuple[int, float]:
    """Rows of the training Parquet file and the size (MB) of its feature and target columns as a pandas frame."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path)
    wanted = {*schema.feature_names, schema.target}
    per_row = sum(TEXT_BYTES if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) else NUMBER_BYTES
                  for f in meta.schema_arrow if f.name in wanted)
    rows = meta.metadata.num_rows
    return rows, rows * per_row / MB


def estimate_mb(schema: Schema, candidate: dict[str, Any], rows: int, frame: float) -> float:
    """Peak memory (MB) of fitting ``candidate`` in memory on ``rows`` rows whose frame takes ``frame`` MB."""
    from components.features import native_feature_types

    family = candidate["family"]
    params = candidate.get("params", {})
    columns = sum(len(c.categories or []) + 1 if c.kind == "categorical" else 5 if c.kind == "datetime" else 1
                  for c in schema.features)  # one-hot width: the model matrix of the scikit-learn families
    matrix = rows * columns * NUMBER_BYTES / MB
    if family in ("xgboost", "lightgbm"):
        native = rows * len(native_feature_types(schema)) * NUMBER_BYTES / MB
        return INTERPRETER_MB + frame + native + rows * len(native_feature_types(schema)) / MB  # + 1-byte bins
    if family == "random_forest":
        # fully grown trees: about 2 x (bootstrap's distinct rows / min_samples_leaf) nodes each
        leaf = max(1, int(params.get("min_samples_leaf", 1)))
        nodes = 2 * 0.632 * rows / leaf
        trees = int(params.get("n_estimators", 100)) * nodes * TREE_NODE_BYTES / MB
        return INTERPRETER_MB + frame + 2 * matrix + trees
    if family == "hist_gradient_boosting":
        return INTERPRETER_MB + frame + 2 * matrix + rows * columns / MB
    return INTERPRETER_MB + frame + 3 * matrix  # linear models: the matrix, its scaled copy, the solver's


def plan(path: str, schema: Schema, candidate: dict[str, Any], budget_mb: float) -> MemoryPlan:
    """How the refit of ``candidate`` on the training Parquet file at ``path`` fits ``budget_mb``.

    Raises MemoryBudgetError (one sentence) when it cannot: a family other than XGBoost whose
    in-memory estimate exceeds the budget.
    """
    rows, frame = frame_mb(path, schema)
    estimated = estimate_mb(schema, candidate, rows, frame)
    family = candidate["family"]
    if estimated <= budget_mb:
        return MemoryPlan(family, rows, estimated, budget_mb, streamed=False)
    if family == "xgboost":
        return MemoryPlan(family, rows, estimated, budget_mb, streamed=True)
    raise MemoryBudgetError(
        f"the refit of candidate {candidate.get('id', family)} ({family}) on {rows:,} rows would need about "
        f"{estimated:,.0f} MB, more than the refit_memory_mb budget of {budget_mb:,.0f} MB; raise the budget with "
        f"the training task's memory limit, or train on fewer rows")


def refit(path: str, schema: Schema, candidate: dict[str, Any], seed: int,
          budget_mb: float) -> tuple[Pipeline, pd.DataFrame, MemoryPlan]:
    """Fit ``candidate`` on every row of the training Parquet file at ``path`` within ``budget_mb``.

    Returns the fitted pipeline, training rows for its reference sample (all of them in memory;
    a sample of ``REFERENCE_ROWS`` when streamed) and the plan it followed. Raises
    MemoryBudgetError before reading any row when the candidate cannot fit.
    """
    import pandas as pd

    from components import train
    from components.package import REFERENCE_ROWS

    chosen = plan(path, schema, candidate, budget_mb)
    if chosen.streamed:
        return xgboost_external(path, schema, candidate, seed), sample_rows(path, REFERENCE_ROWS, seed), chosen
    frame = pd.read_parquet(path)
    return train.refit(frame, schema, candidate, seed), frame, chosen


def sample_rows(path: str, rows: int, seed: int, batch_rows: int = STREAM_BATCH_ROWS) -> pd.DataFrame:
    """About ``rows`` rows of a Parquet file drawn uniformly, reading it one batch at a time."""
    import pandas as pd
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    share = min(1.0, rows / max(1, source.metadata.num_rows))
    rng = np.random.default_rng(seed)
    parts = [batch.to_pandas().sample(frac=share, random_state=rng) for batch in source.iter_batches(batch_size=batch_rows)]
    return pd.concat(parts, ignore_index=True) if parts else source.schema_arrow.empty_table().to_pandas()


def xgboost_external(path: str, schema: Schema, candidate: dict[str, Any], seed: int,
                     batch_rows: int = STREAM_BATCH_ROWS) -> Pipeline:
    """Train an XGBoost candidate from Parquet batches with external memory; the same pipeline the search fits.

    The preprocessing is the family's (``features.native_preprocessor``, stateless given the
    schema); the booster's parameters are ``gbt.xgboost_params``; classes are weighted to
    balance, as ``gbt.FlywheelXGBClassifier`` does in memory.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import xgboost
    from sklearn.pipeline import Pipeline

    from components import gbt
    from components.features import native_feature_types, native_preprocessor

    columns = [*schema.feature_names, schema.target]
    source = pq.ParquetFile(path)
    first = next(source.iter_batches(batch_size=min(batch_rows, 1000), columns=columns)).to_pandas()
    prep = native_preprocessor(schema).fit(first[schema.feature_names])
    types = native_feature_types(schema)
    labels: np.ndarray | None = None
    weights: dict[Any, float] = {}
    if schema.task == "classification":  # class counts from the target column alone
        counts = pc.value_counts(pq.read_table(path, columns=[schema.target])[schema.target].drop_null()).to_pylist()
        labels = np.array(sorted(c["values"] for c in counts))
        total = sum(c["counts"] for c in counts)
        weights = {c["values"]: total / (len(counts) * c["counts"]) for c in counts}

    class ParquetBatches(xgboost.DataIter):
        def __init__(self, cache: str) -> None:
            super().__init__(cache_prefix=cache, on_host=False)
            self._batches: Any = None

        def reset(self) -> None:
            self._batches = iter(source.iter_batches(batch_size=batch_rows, columns=columns))

        def next(self, input_data: Any) -> bool:
            batch = next(self._batches, None)
            if batch is None:
                return False
            frame: pd.DataFrame = batch.to_pandas()
            frame = frame[frame[schema.target].notna()]
            X = prep.transform(frame[schema.feature_names])
            y = frame[schema.target]
            if labels is not None:
                input_data(data=X, label=np.searchsorted(labels, y.to_numpy()), weight=y.map(weights).to_numpy(),
                           feature_types=types)
            else:
                input_data(data=X, label=y.to_numpy(dtype=float), feature_types=types)
            return True

    params = gbt.xgboost_params(schema.task, candidate["params"], len(labels) if labels is not None else 2, seed)
    with tempfile.TemporaryDirectory(prefix="flywheel-xgb-") as cache:
        it = ParquetBatches(f"{cache}/pages")
        matrix = xgboost.ExtMemQuantileDMatrix(it, max_bin=params.get("max_bin"), enable_categorical=True)
        booster = xgboost.train(params, matrix, num_boost_round=gbt.xgboost_rounds(candidate["params"]))
        raw = booster.save_raw("ubj")
        del booster, matrix, it  # their pages live in the directory: released before it is removed
    est = gbt.xgboost_estimator(schema.task, candidate["params"], seed, types, len(labels) if labels is not None else 2)
    est.load_model(bytearray(raw))
    if labels is not None:
        est.labels_ = labels
    return Pipeline([("prep", prep), ("model", est)])
