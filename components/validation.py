"""Validation of records against a version's schema: one columnar pass, whatever the format.

The HTTP service (JSON, Arrow, Parquet bodies) and batch prediction (CSV and Parquet files)
all end here, so a record the service refuses is a row the batch job reports, for the same
reason. Input is a frame of records (JSON records become one first); output is

- the model's input frame for the records that can be scored (index: their position),
- one ``Problem`` per refused value (record, field, reason): a record is refused by itself,
- counts per feature of what was tolerated: nulls (imputed by the model), unknown
  categories, values outside the training range, and fields the model does not use.

Every rule is a mask over a whole column; Python touches single values only to word the
reason of a refused one, or when a JSON column mixes types.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype, is_bool_dtype, is_datetime64_any_dtype, is_numeric_dtype

from components.data import MAX_CATEGORIES, Schema

MAX_RECORDS = 100_000
# Up to this many JSON records, clean ones are checked value by value in plain Python: the
# columnar pass costs about 4 ms per request in pandas overheads, whatever its size.
PLAIN_RECORDS = 64
_SHOWN_ERRORS = 20
_TRUE = {"true": 1.0, "false": 0.0}
_NUMBER_TYPES = (int, float, np.integer, np.floating)


@dataclass(frozen=True)
class Problem:
    """One refused value: which record (0-based), which field, what is wrong."""

    record: int | None
    field: str | None
    problem: str

    def __str__(self) -> str:
        where = []
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.problem}" if where else self.problem

    def to_dict(self) -> dict[str, Any]:
        return {"record": self.record, "field": self.field, "problem": self.problem}


class InvalidInput(ValueError):
    """A request with nothing to score; the message names the records, fields and problems."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        shown = "; ".join(str(p) for p in problems[:_SHOWN_ERRORS])
        more = len(problems) - _SHOWN_ERRORS
        super().__init__(shown + (f" (and {more} more problems)" if more > 0 else ""))

    def as_validation_error(self, title: str = "Input", prefix: tuple[str, ...] = ("records",)) -> Any:
        """The same problems as a pydantic error (loc: records, index, field); BentoML answers it with 400."""
        from pydantic import ValidationError
        from pydantic_core import InitErrorDetails, PydanticCustomError

        details = []
        for p in self.problems[:50]:
            loc: tuple[Any, ...] = prefix + tuple(x for x in (p.record, p.field) if x is not None)
            details.append(InitErrorDetails(
                type=PydanticCustomError("invalid_record", "{message}", {"message": str(p)}), loc=loc, input=None))
        return ValidationError.from_exception_data(title, details)


@dataclass
class Checked:
    """The outcome of validating one request or chunk.

    The model's input is kept as columns (numpy, the schema's feature order) and the positions
    of the valid records; ``frame`` builds the DataFrame from them only when it is asked for.
    A DataFrame of 30 columns cost about 0.4 ms to build and as much again to take apart, per
    request, where the ONNX runtime and the prediction log read the columns themselves.
    """

    columns: dict[str, np.ndarray]  # the model's input, valid records only, one array per feature
    index: np.ndarray  # the position of each valid record in the request
    total: int
    problems: list[Problem] = field(default_factory=list)
    passthrough: pd.DataFrame | None = None  # id / timestamp columns sent, same index as frame
    nulls: Counter[str] = field(default_factory=Counter)
    unknown_categories: Counter[str] = field(default_factory=Counter)
    out_of_range: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)  # field -> records that carried it

    def __len__(self) -> int:
        return len(self.index)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """The model's input as a frame; index = record position."""
        # from the dict alone (its order is the schema's), no copy: one block per column. Naming
        # the columns again made pandas re-index the dict, a third of the cost of building it.
        return pd.DataFrame(self.columns, index=self.row_index, copy=False)

    @property
    def row_index(self) -> pd.Index:
        """The valid records' positions as a pandas index (the frame's and the passthrough's)."""
        return pd.RangeIndex(self.total) if len(self.index) == self.total else pd.Index(self.index)

    @property
    def rejected(self) -> int:
        return self.total - len(self.index)

    def by_record(self) -> dict[int, list[Problem]]:
        """The problems of each refused record."""
        out: dict[int, list[Problem]] = {}
        for p in self.problems:
            if p.record is not None:
                out.setdefault(p.record, []).append(p)
        return out

    def rejected_fields(self) -> Counter[str]:
        """Refused records per field that refused them (a record counts once per field)."""
        return Counter(p.field or "record" for p in {(p.record, p.field): p for p in self.problems}.values())

    def raise_if_empty(self) -> None:
        """A request in which no record can be scored is refused as a whole, naming every problem."""
        if not len(self):
            raise InvalidInput(self.problems or [Problem(None, "records", "holds no record that can be scored")])


class Validator:
    """Validates frames (or JSON records) against one schema and builds the model's input."""

    def __init__(self, schema: Schema, max_records: int = MAX_RECORDS, strict_fields: bool = False,
                 plain_records: int = PLAIN_RECORDS) -> None:
        self.schema = schema
        self.max_records = max_records
        self.strict_fields = strict_fields
        self.plain_records = plain_records
        self.names = schema.feature_names
        self._features = frozenset(self.names)
        # sent along, never used by the model: logged so labels and time windows can be joined
        self.passthrough = [c for c in (*schema.id_columns, *([schema.timestamp] if schema.timestamp else []))
                            if c not in self._features]
        self._categories = {
            c.name: np.array(sorted(c.categories), dtype=object)
            for c in schema.features
            # a list cut at MAX_CATEGORIES is incomplete: unseen values there are not news
            if c.kind == "categorical" and c.categories is not None and len(c.categories) < MAX_CATEGORIES
        }
        self._category_sets = {name: frozenset(cats.tolist()) for name, cats in self._categories.items()}

    # --- entry points ----------------------------------------------------------------------
    def check_records(self, records: Any) -> Checked:
        """Validate JSON-like records (a list of objects); refuse the request only when it is not one."""
        if not isinstance(records, list):
            raise InvalidInput([Problem(None, "records", f"must be a list of objects, got {_kind(records)}")])
        self._check_size(len(records))
        if len(records) <= self.plain_records:
            plain = self._check_plain(records)
            if plain is not None:
                return plain
        problems: list[Problem] = []
        absent: dict[str, list[int]] = {}
        extra: dict[str, list[int]] = {}
        rows: list[dict[str, Any]] = records
        keys = self._features
        for i, r in enumerate(records):
            if type(r) is not dict:
                if rows is records:
                    rows = list(records)
                rows[i] = {}
                problems.append(Problem(i, None, f"must be a JSON object of feature values, got {_kind(r)}"))
                for name in self.names:
                    absent.setdefault(name, []).append(i)
            elif r.keys() != keys:
                for name in keys - r.keys():
                    absent.setdefault(name, []).append(i)
                for name in r.keys() - keys:
                    extra.setdefault(name, []).append(i)
        sent = [n for n in self.passthrough if n in extra]
        frame = pd.DataFrame.from_records(rows, columns=[*self.names, *sent], nrows=len(rows))
        if len(frame) != len(rows):  # from_records drops nothing, but say so if it ever does
            raise AssertionError("record count changed while building the frame")
        return self._check(frame, problems, absent, {k: v for k, v in extra.items() if k not in self.passthrough})

    def check_frame(self, frame: pd.DataFrame) -> Checked:
        """Validate a frame of records (Arrow, Parquet, CSV): each column is one field."""
        self._check_size(len(frame))
        if not isinstance(frame.index, pd.RangeIndex) or frame.index.start != 0 or frame.index.step != 1:
            frame = frame.reset_index(drop=True)
        absent = {name: list(range(len(frame))) for name in self.names if name not in frame.columns}
        if absent:
            frame = frame.assign(**{name: None for name in absent})
        extra = {str(c): None for c in frame.columns if c not in self._features and c not in self.passthrough}
        return self._check(frame, [], absent, extra)

    def validate_records(self, records: Any) -> Checked:
        """``check_records``, refusing a request in which no record can be scored."""
        checked = self.check_records(records)
        checked.raise_if_empty()
        return checked

    def validate_frame(self, frame: pd.DataFrame) -> Checked:
        """``check_frame``, refusing a request in which no record can be scored."""
        checked = self.check_frame(frame)
        checked.raise_if_empty()
        return checked

    # --- the plain pass: a few clean JSON records -------------------------------------------
    def _check_plain(self, records: list[Any]) -> Checked | None:
        """What the columnar pass returns for these records, in plain Python; None to leave it to that pass.

        Only records with nothing to refuse are taken, each value of its kind's plain JSON type
        (numbers, booleans, strings, null; date-times as ISO text); anything else, such as a
        missing field or a number sent as text, goes to the columnar pass, which words the refusal.
        """
        n = len(records)
        keys = self._features
        extra: Counter[str] = Counter()
        for r in records:
            if type(r) is not dict:
                return None
            if r.keys() != keys:
                if not keys <= r.keys():
                    return None
                extra.update(r.keys() - keys)
        sent = [name for name in self.passthrough if name in extra]
        out = Checked(columns={}, index=np.arange(n), total=n)
        out.ignored.update({name: k for name, k in extra.items() if name not in self.passthrough})
        if self.strict_fields and out.ignored:
            return None
        cols = out.columns
        for c in self.schema.features:
            column = [r[c.name] for r in records]
            converted = _PLAIN[c.kind](column)
            if converted is None:
                return None
            cols[c.name], null = converted
            if null:
                out.nulls[c.name] = null
            if c.name in self._category_sets:
                cats = self._category_sets[c.name]
                unknown = sum(1 for v in column if v is not None and v not in cats)
                if unknown:
                    out.unknown_categories[c.name] = unknown
            elif c.kind == "numeric" and c.min is not None and c.max is not None:
                lo, hi = c.min, c.max
                far = sum(1 for v in cols[c.name].tolist() if v < lo or v > hi)
                if far:
                    out.out_of_range[c.name] = far
        passthrough = {}
        for name in sent:
            values = [r.get(name) for r in records]
            if any(v is not None and type(v) is not str for v in values):
                return None
            passthrough[name] = np.array(values, dtype=object)
        if sent:
            out.passthrough = pd.DataFrame(passthrough, index=out.row_index, columns=sent)
        return out

    # --- the columnar pass -----------------------------------------------------------------
    def _check_size(self, n: int) -> None:
        if n == 0:
            raise InvalidInput([Problem(None, "records", "is empty; send at least one record")])
        if n > self.max_records:
            raise InvalidInput([Problem(None, "records", f"holds {n} records, more than the limit of {self.max_records}")])

    def _check(self, frame: pd.DataFrame, problems: list[Problem], absent: dict[str, list[int]],
               extra: dict[str, list[int] | None]) -> Checked:
        n = len(frame)
        bad = np.zeros(n, dtype=bool)
        for p in problems:
            bad[p.record] = True
        out = Checked(columns={}, index=np.arange(0), total=n)
        cols: dict[str, Any] = {}
        nulls: dict[str, np.ndarray] = {}
        for c in self.schema.features:
            s = frame[c.name]
            values, null, refused, reason = _COLUMN[c.kind](s)  # masks of None: no such record
            if c.name in absent:
                missing = np.zeros(n, dtype=bool)
                missing[absent[c.name]] = True
                refused = None if refused is None else refused & ~missing
                null = None if null is None else null & ~missing
                for i in np.flatnonzero(missing & ~bad):
                    problems.append(Problem(int(i), c.name, "is required but missing (send null for an unknown value)"))
                bad |= missing
            if refused is not None:
                for i in np.flatnonzero(refused):
                    problems.append(Problem(int(i), c.name, reason(s.iat[i])))
                bad |= refused
            cols[c.name] = values
            if null is not None:
                nulls[c.name] = null
        for name, where in extra.items():
            out.ignored[name] = n if where is None else len(where)
            if self.strict_fields:
                for i in (range(n) if where is None else where):
                    problems.append(Problem(int(i), name, "is not a feature of this model (strict mode)"))
                    bad[i] = True
        good = ~bad
        for name, null in nulls.items():
            count = int(np.count_nonzero(null & good))
            if count:
                out.nulls[name] = count
        index = np.flatnonzero(good)
        every = len(index) == n  # the usual case: no copy of each column
        # kept as columns (no 2-D block: a copy of every value, about 3 ms at 100k rows x 12
        # features); the runtimes read them column by column
        out.columns = {k: v if every else v[good] for k, v in cols.items()}
        out.index = index
        sent = [name for name in self.passthrough if name in frame.columns]
        if sent:  # as text, so every log part has one type per column whatever the client sent
            kept = frame[sent].iloc[index].set_axis(out.row_index)
            out.passthrough = kept.astype(str).where(kept.notna(), None).astype(object)
        self._drift(out)
        problems.sort(key=lambda p: -1 if p.record is None else p.record)
        out.problems = problems
        return out

    def _drift(self, out: Checked) -> None:
        for name, cats in self._categories.items():
            s = pd.Series(out.columns[name], copy=False)
            unknown = int(np.count_nonzero(s.notna().to_numpy() & ~s.isin(cats).to_numpy()))
            if unknown:
                out.unknown_categories[name] = unknown
        for c in self.schema.features:
            if c.kind == "numeric" and c.min is not None and c.max is not None and len(a := out.columns[c.name]):
                if c.min <= a.min() and a.max() <= c.max:  # all within (False when a value is NaN)
                    continue
                with np.errstate(invalid="ignore"):
                    far = int(np.count_nonzero(a < c.min)) + int(np.count_nonzero(a > c.max))
                if far:
                    out.out_of_range[c.name] = far


# --- one converter per kind: (values for the model, null mask, refused mask, reason); a mask of None: no such record

def _numeric(s: pd.Series) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, Any]:
    expected = "must be a number"
    if s.dtype == np.float64:  # the common case (JSON numbers, Arrow doubles): no copy
        values = s.to_numpy()
        finite = lambda v: f"must be a finite number, got {v}"  # noqa: E731
        # min and max are NaN if any value is, infinite if any value is: two reductions over the
        # column, no mask, where two masks and the passes over them were most of a 100k-row check
        if len(values) and np.isfinite(values.min()) and np.isfinite(values.max()):
            return values, None, None, finite
        return values, np.isnan(values), np.isinf(values), finite
    null = s.isna().to_numpy()
    if is_bool_dtype(s.dtype):
        return np.full(len(s), np.nan), null, ~null, lambda v: f"{expected}, got {_kind(v)} {_shown(v)}"
    if is_numeric_dtype(s.dtype) or s.dtype == object and infer_dtype(s, skipna=True) in (
            "integer", "floating", "mixed-integer-float", "decimal", "empty"):
        values = s.to_numpy(dtype="float64", na_value=np.nan)
    elif s.dtype == object:  # mixed JSON values: the rare slow path, one look per value
        ok = np.fromiter((v is None or (type(v) in _NUMBER_TYPES or isinstance(v, _NUMBER_TYPES))
                          and not isinstance(v, (bool, np.bool_)) for v in s), dtype=bool, count=len(s))
        values = np.fromiter((float(v) if k and v is not None else np.nan for v, k in zip(s, ok, strict=True)),
                             dtype="float64", count=len(s))
        refused = ~ok & ~null
        return _finite(values, null, refused, expected)
    else:  # strings, dates: every present value is refused
        return np.full(len(s), np.nan), null, ~null, lambda v: f"{expected}, got {_kind(v)} {_shown(v)}"
    return _finite(values, null, np.zeros(len(s), dtype=bool), expected)


def _finite(values: np.ndarray, null: np.ndarray, refused: np.ndarray, expected: str) -> tuple[Any, ...]:
    inf = np.isinf(values)
    values = np.where(refused, np.nan, values)
    return values, null & ~refused, refused | inf, lambda v: (
        f"must be a finite number, got {v}" if _is_number(v) else f"{expected}, got {_kind(v)} {_shown(v)}")


def _boolean(s: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    """true/false, 0/1 and the strings "true"/"false" (any case), as 1.0/0.0 like training saw them."""
    null = s.isna().to_numpy()
    reason = "must be true or false (or 0/1, \"true\"/\"false\")"
    if is_bool_dtype(s.dtype):
        values = s.to_numpy(dtype="float64", na_value=np.nan)
        return values, null, np.zeros(len(s), dtype=bool), None
    if is_numeric_dtype(s.dtype):
        values = s.to_numpy(dtype="float64", na_value=np.nan)
    else:
        values = np.fromiter((_bool_value(v) for v in s), dtype="float64", count=len(s))
    refused = ~null & ~np.isin(values, (0.0, 1.0))
    return np.where(refused, np.nan, values), null, refused, lambda v: f"{reason}, got {_kind(v)} {_shown(v)}"


def _bool_value(v: Any) -> float:
    if v is None or v is pd.NA:
        return np.nan
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    if isinstance(v, str):
        return _TRUE.get(v.strip().lower(), -1.0)
    if isinstance(v, _NUMBER_TYPES):
        return float(v) if v == v else np.nan
    return -1.0


def _categorical(s: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    """Strings; whole numbers and booleans become their text, other values are refused."""
    null = s.isna().to_numpy()
    none = np.zeros(len(s), dtype=bool)
    reason = "must be a string"
    if s.dtype == object:
        inferred = infer_dtype(s, skipna=True)
        if inferred in ("string", "empty"):
            return np.where(null, None, s.to_numpy()), null, none, None
        values = np.empty(len(s), dtype=object)
        refused = np.zeros(len(s), dtype=bool)
        for i, v in enumerate(s.to_numpy()):
            if null[i]:
                values[i] = None
            elif isinstance(v, str):
                values[i] = v
            elif isinstance(v, (bool, np.bool_, int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()):
                values[i] = str(v if isinstance(v, (bool, np.bool_)) else int(v))
            else:
                refused[i] = True
        return values, null, refused, lambda v: f"{reason}, got {_kind(v)} {_shown(v)}"
    if is_bool_dtype(s.dtype) or pd.api.types.is_integer_dtype(s.dtype):
        return np.where(null, None, s.astype(str).to_numpy(dtype=object)), null, none, None
    if is_numeric_dtype(s.dtype):
        a = s.to_numpy(dtype="float64", na_value=np.nan)
        with np.errstate(invalid="ignore"):
            refused = ~null & (np.mod(a, 1) != 0)
        text = np.array([None if null[i] or refused[i] else str(int(a[i])) for i in range(len(a))], dtype=object)
        return text, null, refused, lambda v: f"{reason}, got a number {_shown(v)}"
    if is_datetime64_any_dtype(s.dtype):
        return np.full(len(s), None, dtype=object), null, ~null, lambda v: f"{reason}, got a date-time {v}"
    # pandas string dtypes (Arrow strings)
    return s.astype(object).where(~null, None).to_numpy(dtype=object), null, none, None


def _datetime(s: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    """ISO 8601 strings (any offset, made naive UTC like training), epoch seconds, or Arrow timestamps."""
    null = s.isna().to_numpy()
    reason = "must be an ISO 8601 date-time"
    if is_datetime64_any_dtype(s.dtype):
        d = s.dt.tz_convert("UTC").dt.tz_localize(None) if getattr(s.dt, "tz", None) is not None else s
        return d.to_numpy(dtype="datetime64[ns]"), null, np.zeros(len(s), dtype=bool), None
    if is_bool_dtype(s.dtype):
        return np.full(len(s), np.datetime64("NaT"), dtype="datetime64[ns]"), null, ~null, \
            lambda v: f"{reason}, got {_kind(v)} {_shown(v)}"
    if is_numeric_dtype(s.dtype):
        parsed = pd.to_datetime(s, unit="s", errors="coerce")
    else:
        text = s.where(s.map(type).eq(str) if s.dtype == object else ~s.isna(), None)
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce").dt.tz_localize(None)
    values = parsed.to_numpy(dtype="datetime64[ns]")
    refused = ~null & np.isnat(values)
    return values, null, refused, lambda v: f"{reason}, got {_kind(v)} {_shown(v)}"


_COLUMN = {"numeric": _numeric, "boolean": _boolean, "categorical": _categorical, "datetime": _datetime}


# --- the plain pass's converters: (values for the model, nulls), or None for the columnar pass --

def _plain_numeric(column: list[Any]) -> tuple[np.ndarray, int] | None:
    values, null = [], 0
    for v in column:
        t = type(v)
        if t is float:
            if v != v:
                null += 1
            elif v in (math.inf, -math.inf):
                return None
        elif t is int:
            if not -_INT_EXACT <= v <= _INT_EXACT:  # far beyond int64: left to the columnar pass
                return None
            v = float(v)
        elif v is None:
            v = math.nan
            null += 1
        else:
            return None
        values.append(v)
    return np.array(values, dtype=np.float64), null


def _plain_boolean(column: list[Any]) -> tuple[np.ndarray, int] | None:
    values, null = [], 0
    for v in column:
        if type(v) is bool:
            values.append(1.0 if v else 0.0)
        elif v is None:
            values.append(math.nan)
            null += 1
        else:
            return None
    return np.array(values, dtype=np.float64), null


def _plain_categorical(column: list[Any]) -> tuple[np.ndarray, int] | None:
    if any(v is not None and type(v) is not str for v in column):
        return None
    values = np.empty(len(column), dtype=object)
    values[:] = column
    return values, column.count(None)


def _plain_datetime(column: list[Any]) -> tuple[np.ndarray, int] | None:
    if any(v is not None and type(v) is not str for v in column):
        return None
    values, null, refused, _ = _datetime(pd.Series(column, dtype=object))
    if refused.any():
        return None
    return values, int(np.count_nonzero(null))


_INT_EXACT = 2**63  # the columnar pass reads these as int64 or uint64 columns
_PLAIN = {"numeric": _plain_numeric, "boolean": _plain_boolean, "categorical": _plain_categorical,
          "datetime": _plain_datetime}


def _is_number(v: Any) -> bool:
    return isinstance(v, _NUMBER_TYPES) and not isinstance(v, (bool, np.bool_))


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, (bool, np.bool_)):
        return "a boolean"
    if isinstance(v, _NUMBER_TYPES):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, (list, np.ndarray)):
        return "a list"
    return type(v).__name__


def _shown(v: Any) -> str:
    if isinstance(v, np.generic):
        v = v.item()
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
