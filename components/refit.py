"""Refit within a memory budget: the chosen candidate on all training rows, in a task's memory.

Before anything is read, ``plan`` estimates from the Parquet metadata (rows, column types) what
the refit would hold: the training frame, the model matrix, and what the family itself builds
(a random forest's trees grow with the rows; a boosted model's binned matrix does not). Then:

* it fits the budget: the refit reads the frame and fits as the search did;
* an XGBoost candidate that does not: trained from Parquet batches through XGBoost's external
  memory (``ExtMemQuantileDMatrix`` over a ``DataIter``; its pages in a temporary directory), so
  the task holds one batch and the quantised pages, not the table;
* a LightGBM candidate that does not: trained through ``lightgbm.Sequence`` over the file's row
  groups, so the task holds one row group and LightGBM's binned Dataset, not the table;
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
    from components.package import ModelPackage
    from components.settings import Settings

MB = 1_000_000
NUMBER_BYTES = 8  # a float64 in pandas and in the model matrix
TEXT_BYTES = 64  # a short Python string in an object column: the object and its pointer
TREE_NODE_BYTES = 120  # a scikit-learn tree node (the node record and its value array, two classes)
INTERPRETER_MB = 400  # the interpreter with pandas, scikit-learn and the libraries imported
READ_COPIES = 2  # pandas.read_parquet holds the Arrow table and the frame at once
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
        return INTERPRETER_MB + READ_COPIES * frame + native + rows * len(native_feature_types(schema)) / MB  # + 1-byte bins
    if family == "random_forest":
        # fully grown trees: about 2 x (bootstrap's distinct rows / min_samples_leaf) nodes each
        leaf = max(1, int(params.get("min_samples_leaf", 1)))
        nodes = 2 * 0.632 * rows / leaf
        trees = int(params.get("n_estimators", 100)) * nodes * TREE_NODE_BYTES / MB
        return INTERPRETER_MB + READ_COPIES * frame + 2 * matrix + trees
    if family == "hist_gradient_boosting":
        return INTERPRETER_MB + READ_COPIES * frame + 2 * matrix + rows * columns / MB
    return INTERPRETER_MB + READ_COPIES * frame + 3 * matrix  # linear models: the matrix, its scaled copy, the solver's


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
    if family in STREAMED:
        return MemoryPlan(family, rows, estimated, budget_mb, streamed=True)
    raise MemoryBudgetError(
        f"the refit of candidate {candidate.get('id', family)} ({family}) on {rows:,} rows would need about "
        f"{estimated:,.0f} MB, more than the refit_memory_mb budget of {budget_mb:,.0f} MB; {RAISE}")


RAISE = "raise the budget with the training task's memory limit, or train on fewer rows"


def refused_families(path: str, schema: Schema, candidates: list[dict[str, Any]], families: list[str],
                     budget_mb: float) -> dict[str, dict[str, Any]]:
    """The families (of ``families``) whose refit on the training Parquet file at ``path`` would not fit
    ``budget_mb``, each with the trial record the search keeps for it instead of searching it.

    Decided before the search from the file's metadata (``plan``), on the family's default points
    (``candidates``; a family without one: its estimator's defaults): a family is refused when none
    of them fits; XGBoost and LightGBM never are (their refit streams). The record's ``error`` is
    the one sentence the leaderboard and the version card show.
    """
    from components.train import PRIMARY

    rows, frame = frame_mb(path, schema)
    refused: dict[str, dict[str, Any]] = {}
    for family in (f for f in families if f not in STREAMED):
        points = [c for c in candidates if c["family"] == family] or [{"id": family, "family": family, "params": {}}]
        estimated = min(estimate_mb(schema, point, rows, frame) for point in points)
        if estimated > budget_mb:  # as ``plan`` decides for each of them
            refused[family] = {
                "candidate": {"id": family, "family": family, "params": {}, "select": False},
                "metric": PRIMARY[schema.task], "origin": "default", "score": None, "std": None, "folds": 0,
                "seconds": 0.0, **_refusal(f"model family {family}", rows, estimated, budget_mb)}
    return refused


def _refusal(what: str, rows: int, estimated: float, budget_mb: float) -> dict[str, Any]:
    """The fields that mark a trial record refused over the budget, with the one sentence that says why."""
    return {"state": "refused", "estimated_mb": round(estimated), "budget_mb": budget_mb,
            "error": f"{what} is refused before training: its refit on {rows:,} rows would need about "
                     f"{estimated:,.0f} MB, more than the refit_memory_mb budget of {budget_mb:,.0f} MB ({RAISE})"}


def within_budget(path: str, schema: Schema, trials: list[dict[str, Any]], budget_mb: float) -> list[dict[str, Any]]:
    """The search's trials with each complete one whose own refit would not fit ``budget_mb`` marked refused.

    The search refuses a family on its default points (``refused_families``); a sampled point of a
    family that passed (a forest of smaller leaves, say) may still not fit. Marked here, from the
    Parquet metadata, before the best trial is chosen, the refit takes the best trial that fits
    instead of failing on one that does not; the mark's ``error`` is the sentence the leaderboard shows.
    """
    rows, frame = frame_mb(path, schema)

    def mark(trial: dict[str, Any]) -> dict[str, Any]:
        candidate = trial["candidate"]
        if trial.get("state", "complete") != "complete" or candidate["family"] in STREAMED:
            return trial
        estimated = estimate_mb(schema, candidate, rows, frame)
        return trial if estimated <= budget_mb else {**trial, **_refusal(f"trial {candidate['id']}", rows, estimated, budget_mb)}

    return [mark(trial) for trial in trials]


def none_fits(refused: list[dict[str, Any]]) -> MemoryBudgetError:
    """The one sentence a run ends with when the memory budget refused every family it searched."""
    budget = refused[0]["budget_mb"]
    needs = ", ".join(f"{r['candidate']['family']} about {r['estimated_mb']:,} MB" for r in refused)
    return MemoryBudgetError(f"no model family fits the refit_memory_mb budget of {budget:,.0f} MB (their refits "
                             f"would need: {needs}); {RAISE}, or search xgboost or lightgbm, whose refit streams")


def refit(path: str, schema: Schema, candidate: dict[str, Any], seed: int,
          budget_mb: float) -> tuple[Pipeline, pd.DataFrame, MemoryPlan]:
    """Fit ``candidate`` on every row of the training Parquet file at ``path`` within ``budget_mb``.

    Returns the fitted pipeline, training rows for its reference sample (all of them in memory;
    a sample of ``REFERENCE_ROWS`` when streamed: ``train.read_sample``) and the plan it followed. Raises
    MemoryBudgetError before reading any row when the candidate cannot fit.
    """
    import pandas as pd

    from components import train
    from components.package import REFERENCE_ROWS

    chosen = plan(path, schema, candidate, budget_mb)
    if chosen.streamed:
        return (STREAMED[chosen.family](path, schema, candidate, seed),
                train.read_sample(path, [*schema.feature_names, schema.target], REFERENCE_ROWS, seed), chosen)
    frame = pd.read_parquet(path)
    return train.refit(frame, schema, candidate, seed), frame, chosen


@dataclass(frozen=True)
class _Stream:
    """What a streamed refit reads the training file with: its columns, the family's preprocessing
    (stateless given the schema, fitted on a few rows), the feature types, and for a classifier the
    labels in code order with each one's balancing weight (as ``class_weight="balanced"``)."""

    columns: list[str]
    prep: Any
    types: list[str]
    labels: np.ndarray | None
    weights: dict[Any, float]

    def xy(self, frame: pd.DataFrame, schema: Schema) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Features, label (class codes for a classifier) and row weights of a batch."""
        frame = frame[frame[schema.target].notna()]
        y = frame[schema.target]
        X = self.prep.transform(frame[schema.feature_names])
        if self.labels is None:
            return X, y.to_numpy(dtype=float), None
        return X, np.searchsorted(self.labels, y.to_numpy()), y.map(self.weights).to_numpy(dtype=float)


def _stream(path: str, schema: Schema) -> _Stream:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from components.features import native_feature_types, native_preprocessor

    columns = [*schema.feature_names, schema.target]
    first = next(pq.ParquetFile(path).iter_batches(batch_size=100, columns=columns)).to_pandas()
    prep = native_preprocessor(schema).fit(first[schema.feature_names])
    labels, weights = None, {}
    if schema.task == "classification":  # class counts from the target column alone
        counts = pc.value_counts(pq.read_table(path, columns=[schema.target])[schema.target].drop_null()).to_pylist()
        labels = np.array(sorted(c["values"] for c in counts))
        total = sum(c["counts"] for c in counts)
        weights = {c["values"]: total / (len(counts) * c["counts"]) for c in counts}
    return _Stream(columns, prep, native_feature_types(schema), labels, weights)


def xgboost_external(path: str, schema: Schema, candidate: dict[str, Any], seed: int,
                     batch_rows: int = STREAM_BATCH_ROWS) -> Pipeline:
    """Train an XGBoost candidate from Parquet batches with external memory; the same pipeline the search fits.

    The preprocessing is the family's (``features.native_preprocessor``); the booster's
    parameters are ``gbt.xgboost_params``; classes are weighted to balance, as
    ``gbt.FlywheelXGBClassifier`` does in memory.
    """
    import pyarrow.parquet as pq
    import xgboost
    from sklearn.pipeline import Pipeline

    from components import gbt, train

    stream = _stream(path, schema)
    source = pq.ParquetFile(path)

    class ParquetBatches(xgboost.DataIter):
        def __init__(self, cache: str) -> None:
            super().__init__(cache_prefix=cache, on_host=False)
            self._batches: Any = None

        def reset(self) -> None:
            self._batches = iter(source.iter_batches(batch_size=batch_rows, columns=stream.columns))

        def next(self, input_data: Any) -> bool:
            batch = next(self._batches, None)
            if batch is None:
                return False
            X, y, w = stream.xy(batch.to_pandas(), schema)
            input_data(data=X, label=y, weight=w, feature_types=stream.types)
            return True

    n_classes = len(stream.labels) if stream.labels is not None else 2
    params = train.family_params(schema.task, "xgboost", candidate["params"])
    booster_params = gbt.xgboost_params(schema.task, params, n_classes, seed)
    with tempfile.TemporaryDirectory(prefix="flywheel-xgb-") as cache:
        it = ParquetBatches(f"{cache}/pages")
        matrix = xgboost.ExtMemQuantileDMatrix(it, max_bin=booster_params.get("max_bin"), enable_categorical=True)
        booster = xgboost.train(booster_params, matrix, num_boost_round=gbt.xgboost_rounds(params))
        raw = booster.save_raw("ubj")
        del booster, matrix, it  # their pages live in the directory: released before it is removed
    est = gbt.xgboost_estimator(schema.task, params, seed, stream.types, n_classes)
    est.load_model(bytearray(raw))
    if stream.labels is not None:
        est.labels_ = stream.labels
    return Pipeline([("prep", stream.prep), ("model", est)])


def lightgbm_sequence(path: str, schema: Schema, candidate: dict[str, Any], seed: int,
                      batch_rows: int = STREAM_BATCH_ROWS) -> Pipeline:
    """Train a LightGBM candidate from the Parquet file through ``lightgbm.Sequence``: LightGBM samples
    rows to find its bins, then pushes the rows in batches into its binned Dataset; the table is never
    held as a frame. The parameters are ``gbt.lightgbm_train_params``, the preprocessing the family's."""
    import lightgbm
    import pyarrow.parquet as pq
    from sklearn.pipeline import Pipeline

    from components import gbt, train

    stream = _stream(path, schema)
    source = pq.ParquetFile(path)
    starts = np.cumsum([0] + [source.metadata.row_group(i).num_rows for i in range(source.num_row_groups)])

    class ParquetRows(lightgbm.Sequence):
        """Rows of the file by index, one row group decoded at a time (LightGBM reads in index order)."""

        batch_size = batch_rows

        def __init__(self) -> None:
            self._group, self._X = -1, np.empty((0, len(stream.types)))

        def __len__(self) -> int:
            return int(starts[-1])

        def _rows(self, group: int) -> np.ndarray:
            if group != self._group:
                frame = source.read_row_group(group, columns=stream.columns).to_pandas()
                self._group, self._X = group, stream.prep.transform(frame[schema.feature_names])
            return self._X

        def __getitem__(self, idx: int | slice) -> np.ndarray:
            if isinstance(idx, slice):
                lo, hi, _ = idx.indices(len(self))
                parts, i = [], lo
                while i < hi:
                    g = int(np.searchsorted(starts, i, side="right") - 1)
                    end = min(hi, int(starts[g + 1]))
                    parts.append(self._rows(g)[i - starts[g]:end - starts[g]])
                    i = end
                return np.concatenate(parts) if parts else np.empty((0, len(stream.types)))
            g = int(np.searchsorted(starts, idx, side="right") - 1)
            return self._rows(g)[idx - starts[g]]

    # one column read whole: the labels and weights, row for row (the split left no row without a target)
    y_all = pq.read_table(path, columns=[schema.target]).to_pandas()[schema.target]
    if stream.labels is not None:
        y, w = np.searchsorted(stream.labels, y_all.to_numpy()), y_all.map(stream.weights).to_numpy(dtype=float)
    else:
        y, w = y_all.to_numpy(dtype=float), None
    n_classes = len(stream.labels) if stream.labels is not None else 2
    params, rounds = gbt.lightgbm_train_params(schema.task, train.family_params(schema.task, "lightgbm",
                                                                                candidate["params"]), n_classes, seed)
    categorical = [i for i, t in enumerate(stream.types) if t == "c"]
    data = lightgbm.Dataset([ParquetRows()], label=y, weight=w, categorical_feature=categorical,
                            params={"max_bin": params.get("max_bin", 255), "verbosity": -1})
    booster = lightgbm.train(params, data, num_boost_round=rounds)
    cls = gbt.LightGBMBoosterClassifier if stream.labels is not None else gbt.LightGBMBoosterRegressor
    est = cls(booster, stream.labels, params, rounds, categorical)
    return Pipeline([("prep", stream.prep), ("model", est)])


# The families whose refit streams from Parquet when it would not fit in memory.
STREAMED = {"xgboost": xgboost_external, "lightgbm": lightgbm_sequence}


def refit_and_package(train_path: str, holdout_path: str, schema: Schema, candidate: dict[str, Any],
                      settings: Settings, job: str) -> tuple[ModelPackage, dict[str, Any]]:
    """The refit step: fit the chosen candidate on the training rows and package it; returns it and how it trained.

    An XGBoost candidate with ``train_workers`` > 1 is trained by that many workers over XGBoost's
    collective protocol (components/distributed_xgb.py: local processes, or a Kubeflow Trainer
    TrainJob with ``runner: kfp``). Every other refit runs in this process within the
    ``refit_memory_mb`` budget (``refit`` above: in memory, streamed, or refused in one sentence
    before any row is read). The second value is the version manifest's ``training`` record: the
    engine, the number of workers and, in process, the memory plan followed.
    """
    import pandas as pd

    from components import distributed_xgb as dx
    from components import package as packaging
    from components.settings import process_environment
    from components.train import make_model

    template = make_model(schema, candidate, settings.seed)
    if settings.train_workers > 1 and dx.is_distributable(template):
        from components.gbt import FlywheelXGBClassifier

        # the family's classifier balances classes by weights: counted over every training file, not per worker
        model, outcome, sample = dx.distributed_refit(template, [train_path], schema, settings, job, process_environment(),
                                                      balanced_classes=isinstance(template[-1], FlywheelXGBClassifier))
        made = packaging.package(model, sample, pd.read_parquet(holdout_path), schema, settings.seed)
        return made, {"engine": outcome.engine, "workers": len(outcome.workers),
                      "peak_rss_kib": [w["peak_rss_kib"] for w in outcome.workers]}
    # the holdout is read after the fit: a refit refused over its budget reads no rows at all
    model, rows, chosen = refit(train_path, schema, candidate, settings.seed, settings.refit_memory_mb)
    made = packaging.package(model, rows, pd.read_parquet(holdout_path), schema, settings.seed)
    return made, {"engine": dx.ENGINE_IN_PROCESS, "workers": 1, "refit": chosen.describe()}
