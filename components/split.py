"""Features, first half: the holdout split (the preprocessing pipeline is components/features.py).

The split is decided on two columns (the target, and the timestamp when there is one):
``split_rows`` returns row positions, and ``split_file`` copies the rows of an ingested
Parquet file into the training and holdout files in slices of Arrow batches, so the task
holds the table once, in Arrow's compact form, never as a second and third pandas copy.

Only pandas at import: the split task starts without scikit-learn, which a fresh
interpreter pays about a second for (scipy.stats comes with it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from components.data import Schema

SLICE_ROWS = 262_144  # rows copied at a time into the split's files


def split_rows(target: pd.Series, timestamp: pd.Series | None, task: str, holdout_fraction: float,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the training and holdout rows (rows without a target are in neither): the
    latest rows when a timestamp is given, else stratified random."""
    labelled = np.flatnonzero(target.notna().to_numpy())
    if timestamp is not None:
        order = np.argsort(timestamp.to_numpy()[labelled], kind="stable")  # NaT last, as pandas sorts it
        ordered = labelled[order]
        cut = int(round(len(ordered) * (1 - holdout_fraction)))
        return ordered[:cut], ordered[cut:]
    from sklearn.model_selection import train_test_split

    stratify = target.to_numpy()[labelled] if task == "classification" else None
    train, holdout = train_test_split(labelled, test_size=holdout_fraction, random_state=seed, stratify=stratify)
    return np.asarray(train), np.asarray(holdout)


def split(
    frame: pd.DataFrame, schema: Schema, holdout_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Holdout split of a frame: the latest rows when a timestamp exists, else stratified random."""
    train, holdout = split_rows(frame[schema.target], frame[schema.timestamp] if schema.timestamp else None,
                                schema.task, holdout_fraction, seed)
    return frame.iloc[train].reset_index(drop=True), frame.iloc[holdout].reset_index(drop=True)


def split_file(dataset: str, schema: Schema, holdout_fraction: float, seed: int, train_path: str,
               holdout_path: str) -> tuple[int, int]:
    """Split the ingested Parquet file ``dataset`` into ``train_path`` and ``holdout_path`` (as ``split`` does);
    returns their row counts. Reads the two deciding columns, then the table once as Arrow."""
    import pyarrow.parquet as pq

    keys = [schema.target] + ([schema.timestamp] if schema.timestamp else [])
    deciding = pq.read_table(dataset, columns=keys).to_pandas()
    train, holdout = split_rows(deciding[schema.target], deciding[schema.timestamp] if schema.timestamp else None,
                                schema.task, holdout_fraction, seed)
    del deciding
    table = pq.read_table(dataset)
    for rows, path in ((train, train_path), (holdout, holdout_path)):
        with pq.ParquetWriter(path, table.schema) as writer:
            for start in range(0, len(rows), SLICE_ROWS):
                writer.write_table(table.take(rows[start:start + SLICE_ROWS]))
            if not len(rows):
                writer.write_table(table.slice(0, 0))
    return len(train), len(holdout)
