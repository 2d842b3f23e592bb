"""Validate: the data-quality gate. Errors stop the run; warnings are reported, not raised.

What stops a run is data that cannot train a sound model (no rows, a constant or missing
target, a column that leaks the target) or a *change* against the champion (a column gone,
a kind changed, a missing rate that jumped). What the schema already handled by a rule (a
sparse column imputed or dropped, a constant column dropped) is a warning. A refusal names
every error, one line each.
"""

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
        if len(self.errors) == 1:
            raise DataError(f"data validation failed: {self.errors[0]}")
        if self.errors:
            lines = "".join(f"\n  - {e}" for e in self.errors)
            raise DataError(f"data validation failed with {len(self.errors)} errors:{lines}")


NULL_JUMP = 0.25  # a missing rate this much above the champion's is a data break, not drift


def validate(
    frame: pd.DataFrame,
    schema: Schema,
    champion_schema: Schema | None = None,
    max_null_rate: float = 0.2,
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
    for d in schema.dropped:
        warn(f"column {d['name']!r} is dropped: {d['reason']}")
    if not schema.features:
        left = "; ".join(f"{d['name']!r} {d['reason']}" for d in schema.dropped)
        err("no feature columns are left after ids, excluded and uninformative columns are removed"
            + (f" ({left})" if left else ""))
    for col in schema.features:
        s = frame[col.name]
        null_rate = float(s.isna().mean())
        if null_rate == 1.0 or s.nunique(dropna=True) < 1:
            warn(f"column {col.name!r} is entirely empty; the model ignores it")
            continue
        if col.missing_indicator:
            warn(f"column {col.name!r} is {null_rate:.0%} missing: kept, imputed, with a missing-indicator")
        elif null_rate > max_null_rate:
            warn(f"column {col.name!r} is {null_rate:.0%} missing: kept, imputed")
        if s.nunique(dropna=True) == 1:
            warn(f"column {col.name!r} is constant; the model drops it")
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
    dropped = {d["name"]: d for d in schema.dropped}
    for c in champion.features:
        rate = mine[c.name].null_rate if c.name in mine else dropped.get(c.name, {}).get("null_rate")
        if rate is not None and rate - c.null_rate > NULL_JUMP:
            out.append(f"column {c.name!r} is {rate:.0%} missing, against {c.null_rate:.0%} in the champion's "
                       "training data (data break)")
        elif c.name in dropped:
            out.append(f"column {c.name!r} used by the champion is now {dropped[c.name]['reason']} (schema break)")
        elif c.name not in mine:
            out.append(f"column {c.name!r} used by the champion is missing (schema break)")
        elif mine[c.name].kind != c.kind and {mine[c.name].kind, c.kind} != {"numeric", "boolean"}:
            # numeric <-> boolean: an older schema recorded booleans as numbers; the model reads both as 0/1
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
