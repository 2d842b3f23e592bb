"""Features, first half: the holdout split (the preprocessing pipeline is components/features.py).

Only pandas at import: the split task starts without scikit-learn, which a fresh
interpreter pays about a second for (scipy.stats comes with it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from components.data import Schema


def split(
    frame: pd.DataFrame, schema: Schema, holdout_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Holdout split: the latest rows when a timestamp exists, else stratified random."""
    frame = frame[frame[schema.target].notna()]
    if schema.timestamp:
        ordered = frame.sort_values(schema.timestamp, kind="stable")
        cut = int(round(len(ordered) * (1 - holdout_fraction)))
        return ordered.iloc[:cut].reset_index(drop=True), ordered.iloc[cut:].reset_index(drop=True)
    from sklearn.model_selection import train_test_split

    stratify = frame[schema.target] if schema.task == "classification" else None
    train, holdout = train_test_split(frame, test_size=holdout_fraction, random_state=seed, stratify=stratify)
    return train.reset_index(drop=True), holdout.reset_index(drop=True)
