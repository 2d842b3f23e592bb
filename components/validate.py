"""Validate: the data-quality gate. Errors stop the run; warnings are reported, not raised."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components.data import DataError, Schema


@dataclass
class ValidationReport:
    rows: int
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def markdown(self) -> str:
        lines = ["# Data validation", "", f"Rows: {self.rows}", ""]
        lines += ["## Errors", *(f"- {e}" for e in self.errors or ["none"]), ""]
        lines += ["## Warnings", *(f"- {w}" for w in self.warnings or ["none"]), ""]
        return "\n".join(lines)

    def raise_for_errors(self) -> None:
        if self.errors:
            more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            raise DataError(f"data validation failed: {self.errors[0]}{more}")


def validate(
    frame: pd.DataFrame,
    schema: Schema,
    champion_schema: Schema | None = None,
    max_null_rate: float = 0.5,
    min_rows: int = 30,
) -> ValidationReport:
    """Check the data before any training; every message names the column."""
    report = ValidationReport(rows=len(frame))
    err, warn = report.errors.append, report.warnings.append
    if len(frame) == 0:
        err("the data has no rows")
        return report
    if len(frame) < min_rows:
        err(f"the data has only {len(frame)} rows; at least {min_rows} are needed to train and evaluate")
    y = frame[schema.target]
    if y.isna().all():
        err(f"target column {schema.target!r} is empty")
        return report
    if y.isna().any():
        warn(f"target column {schema.target!r} has {int(y.isna().sum())} missing values; those rows are dropped")
    y = y.dropna()
    if schema.task == "classification":
        counts = y.value_counts()
        if len(counts) < 2:
            err(f"target column {schema.target!r} has only one class ({counts.index[0]!r})")
        elif counts.min() < 2:
            err(f"target column {schema.target!r}: class {counts.idxmin()!r} has a single row")
        elif counts.max() / counts.sum() > 0.95:
            warn(f"target column {schema.target!r} is imbalanced: {counts.idxmax()!r} is {counts.max() / counts.sum():.0%} of rows")
    elif y.nunique() < 2:
        err(f"target column {schema.target!r} is constant")
    if not schema.features:
        err("no feature columns are left after ids and excluded columns are removed")
    for col in schema.features:
        s = frame[col.name]
        null_rate = float(s.isna().mean())
        if null_rate == 1.0:
            err(f"column {col.name!r} is entirely empty")
            continue
        if null_rate > max_null_rate:
            err(f"column {col.name!r} is {null_rate:.0%} missing (limit {max_null_rate:.0%})")
        elif null_rate > 0.2:
            warn(f"column {col.name!r} is {null_rate:.0%} missing")
        if s.nunique(dropna=True) <= 1:
            err(f"column {col.name!r} is constant")
        leak = _leak(s, frame[schema.target], schema.task)
        if leak:
            err(f"column {col.name!r} leaks the target {schema.target!r}: {leak}")
    if champion_schema is not None:
        for msg in schema_break(schema, champion_schema):
            err(msg)
        new = set(schema.feature_names) - set(champion_schema.feature_names)
        if new:
            warn(f"new columns not seen by the champion: {', '.join(sorted(new))}")
    return report


def schema_break(schema: Schema, champion: Schema) -> list[str]:
    """What in the new data breaks the champion's contract (missing columns, changed kinds)."""
    out = []
    if schema.target != champion.target:
        out.append(f"target column changed from {champion.target!r} to {schema.target!r} (schema break against the champion)")
    if schema.task != champion.task:
        out.append(f"task changed from {champion.task} to {schema.task} (schema break against the champion)")
    mine = {c.name: c for c in schema.features}
    for c in champion.features:
        if c.name not in mine:
            out.append(f"column {c.name!r} used by the champion is missing (schema break)")
        elif mine[c.name].kind != c.kind:
            out.append(f"column {c.name!r} changed from {c.kind} to {mine[c.name].kind} (schema break)")
    return out


def _leak(x: pd.Series, y: pd.Series, task: str) -> str | None:
    """Detect a feature that is a copy or a deterministic function of the target."""
    both = pd.DataFrame({"x": x, "y": y}).dropna()
    if len(both) < 30 or both["x"].nunique() < 2:
        return None
    if both["x"].astype(str).equals(both["y"].astype(str)):
        return "it is a copy of the target"
    # x determines y when each x value maps to one y value and x is not an id
    if task == "classification" and both["x"].nunique() <= max(50, 0.2 * len(both)):
        purity = both.groupby("x", observed=True)["y"].nunique()
        if (purity == 1).all() and both["x"].nunique() <= both["y"].nunique() * 5:
            return "each of its values maps to exactly one class"
    if pd.api.types.is_numeric_dtype(both["x"]) and pd.api.types.is_numeric_dtype(both["y"]):
        xs, ys = both["x"].astype(float), both["y"].astype(float)
        with np.errstate(all="ignore"):
            rho = xs.rank().corr(ys.rank())
        if np.isfinite(rho) and abs(rho) > 0.999:
            return f"rank correlation {rho:.4f} with the target"
    return None
