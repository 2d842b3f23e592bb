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
import pyarrow as pa
import pyarrow.compute as pc

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
    data: pa.Table | pd.DataFrame,
    schema: Schema,
    champion_schema: Schema | None = None,
    max_null_rate: float = 0.2,
    min_rows: int = 30,
) -> ValidationReport:
    """Check the data before any training; every message names the column.

    One columnar pass over Arrow arrays (pyarrow.compute: null counts, distinct counts, a group-by
    for purity); a frame is taken as Arrow first. The rank correlation of the leak check looks at an
    evenly spaced sample of ``LEAK_SAMPLE`` rows: a column that copies the target does so in any sample.
    """
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    rows = table.num_rows
    report = ValidationReport(rows=rows)
    err, warn = report.errors.append, report.warnings.append
    if rows == 0:
        err("the data has no rows")
        return report
    if rows < min_rows:
        err(f"the data has only {rows} rows; at least {min_rows} are needed to train and evaluate")
    target = table.column(schema.target)
    y = _valid(target)
    if len(y) == 0:
        err(f"target column {schema.target!r} is empty")
        return report
    if len(y) < rows:
        warn(f"target column {schema.target!r} has {rows - len(y)} missing values; those rows are dropped")
    if schema.task == "classification":
        counts = sorted(((c["counts"], c["values"]) for c in pc.value_counts(y).to_pylist()), key=lambda vc: -vc[0])
        total = sum(n for n, _ in counts)
        if len(counts) < 2:
            err(f"target column {schema.target!r} has only one class ({counts[0][1]!r})")
        elif counts[-1][0] < 2:
            err(f"target column {schema.target!r}: class {counts[-1][1]!r} has a single row")
        elif counts[0][0] / total > 0.95:
            warn(f"target column {schema.target!r} is imbalanced: {counts[0][1]!r} is {counts[0][0] / total:.0%} of rows")
    elif pc.count_distinct(y).as_py() < 2:
        err(f"target column {schema.target!r} is constant")
    for d in schema.dropped:
        warn(f"column {d['name']!r} is dropped: {d['reason']}")
    if not schema.features:
        left = "; ".join(f"{d['name']!r} {d['reason']}" for d in schema.dropped)
        err("no feature columns are left after ids, excluded and uninformative columns are removed"
            + (f" ({left})" if left else ""))
    for col in schema.features:
        s = table.column(col.name)
        values = _valid(s)
        null_rate = 1 - len(values) / rows
        distinct = pc.count_distinct(values).as_py() if len(values) else 0
        if distinct < 1:
            warn(f"column {col.name!r} is entirely empty; the model ignores it")
            continue
        if col.missing_indicator:
            warn(f"column {col.name!r} is {null_rate:.0%} missing: kept, imputed, with a missing-indicator")
        elif null_rate > max_null_rate:
            warn(f"column {col.name!r} is {null_rate:.0%} missing: kept, imputed")
        if distinct == 1:
            warn(f"column {col.name!r} is constant; the model drops it")
        leak = _leak(s, target, schema.task)
        if leak:
            err(f"column {col.name!r} leaks the target {schema.target!r}: {leak}")
    if champion_schema is not None:
        for msg in schema_break(schema, champion_schema):
            err(msg)
        new = set(schema.feature_names) - set(champion_schema.feature_names)
        if new:
            warn(f"new columns not seen by the champion: {', '.join(sorted(new))}")
    return report


LEAK_SAMPLE = 200_000


def _present(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where ``col`` holds a value: not null, and not NaN in a float column."""
    if pa.types.is_floating(col.type):
        return pc.and_(pc.is_valid(col), pc.invert(pc.is_nan(col)))
    return pc.is_valid(col)


def _valid(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return col.filter(_present(col)) if col.null_count or pa.types.is_floating(col.type) else col


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


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


def _leak(x: pa.ChunkedArray, y: pa.ChunkedArray, task: str) -> str | None:
    """Detect a feature that is a copy or a deterministic function of the target."""
    both = pc.and_(_present(x), _present(y))
    xs, ys = x.filter(both), y.filter(both)
    if len(xs) < 30:
        return None
    x_distinct, y_distinct = pc.count_distinct(xs).as_py(), pc.count_distinct(ys).as_py()
    if x_distinct < 2:
        return None
    # a copy has as many distinct values as the target: only then compare them as text
    if x_distinct == y_distinct and pc.all(pc.equal(pc.cast(xs, pa.string()), pc.cast(ys, pa.string()))).as_py():
        return "it is a copy of the target"
    # x determines y when each x value maps to one y value and x is not an id
    if task == "classification" and x_distinct <= max(50, 0.2 * len(xs)):
        purity = pa.table({"x": xs, "y": ys}).group_by("x").aggregate([("y", "count_distinct")])
        if pc.all(pc.equal(purity.column("y_count_distinct"), 1)).as_py() and x_distinct <= y_distinct * 5:
            return "each of its values maps to exactly one class"
    if _numeric(xs.type) and _numeric(ys.type):
        step = max(1, len(xs) // LEAK_SAMPLE)
        pick = np.arange(0, len(xs), step)
        sx = pd.Series(xs.take(pick).to_numpy(zero_copy_only=False), dtype=float)
        sy = pd.Series(ys.take(pick).to_numpy(zero_copy_only=False), dtype=float)
        with np.errstate(all="ignore"):
            rho = sx.rank().corr(sy.rank())
        if np.isfinite(rho) and abs(rho) > 0.999:
            return f"rank correlation {rho:.4f} with the target"
    return None
