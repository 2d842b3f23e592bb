"""Request validation derived from a model version's schema.

A ``RecordValidator`` is built once per loaded version: a pydantic TypedDict per record
(one typed field per feature, unknown fields forbidden, every feature required), then a
column-wise pass for what types cannot say (inf, NaN or null where the training data had no
missing values). It returns the model's input frame plus the drift it noticed on the way
(unknown categories, values outside the training range), which is counted, never refused.

The same validator serves the HTTP endpoints (first problems raised as ``InvalidInput``)
and batch prediction (every bad row reported, good rows kept).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Strict, StrictBool, StrictInt, StrictStr, TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from typing_extensions import TypedDict

from components.data import MAX_CATEGORIES, Schema

MAX_RECORDS = 100_000
_SHOWN_ERRORS = 5


@dataclass(frozen=True)
class Problem:
    """One bad value: which record (0-based), which field, what is wrong."""

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


class InvalidInput(ValueError):
    """A request the schema refuses; the message names the record, the field and the problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        shown = "; ".join(str(p) for p in problems[:_SHOWN_ERRORS])
        more = len(problems) - _SHOWN_ERRORS
        super().__init__(shown + (f" (and {more} more problems)" if more > 0 else ""))

    def as_validation_error(self, title: str = "Input", prefix: tuple[str, ...] = ("records",)) -> ValidationError:
        """The same problems as a pydantic error (loc: records, index, field); BentoML answers it with 400."""
        details = []
        for p in self.problems[:50]:
            loc: tuple[Any, ...] = prefix + tuple(x for x in (p.record, p.field) if x is not None)
            details.append(InitErrorDetails(
                type=PydanticCustomError("invalid_record", "{message}", {"message": str(p)}), loc=loc, input=None))
        return ValidationError.from_exception_data(title, details)


@dataclass
class Rows:
    """Validated records as the model's input frame, with the drift counted on the way."""

    frame: pd.DataFrame
    records: list[dict[str, Any]] = field(default_factory=list)
    unknown_categories: Counter[str] = field(default_factory=Counter)
    out_of_range: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.frame)


_Number = Annotated[float, Strict()]  # strict: no "3.5" strings, no booleans; ints are fine


def _field_type(kind: str) -> Any:
    if kind == "categorical":
        return Union[StrictStr, StrictInt, StrictBool, None]
    if kind == "datetime":
        return Union[dt.datetime, None]  # ISO 8601 strings (and epoch seconds) parse
    if kind == "boolean":
        return Union[StrictBool, _Number, None]
    return Union[_Number, None]


class RecordValidator:
    """Validates JSON-like records against one schema and builds the model's input frame."""

    def __init__(self, schema: Schema, max_records: int = MAX_RECORDS) -> None:
        self.schema = schema
        self.max_records = max_records
        self.names = schema.feature_names
        self._keys = frozenset(self.names)
        record = TypedDict("Record", {c.name: _field_type(c.kind) for c in schema.features})  # type: ignore[misc]
        record.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
        self._adapter = TypeAdapter(list[record])
        self._nullable = {c.name: c.null_rate > 0 for c in schema.features}
        self._categories = {
            c.name: frozenset(c.categories)
            for c in schema.features
            # a list cut at MAX_CATEGORIES is incomplete: unseen values there are not news
            if c.kind == "categorical" and c.categories is not None and len(c.categories) < MAX_CATEGORIES
        }
        self._ranges = {c.name: (c.min, c.max) for c in schema.features
                        if c.kind in ("numeric", "boolean") and c.min is not None and c.max is not None}

    def json_schema(self) -> dict[str, Any]:
        """The request model as JSON schema (with the training ranges and categories as hints)."""
        props = {}
        for c in self.schema.features:
            p: dict[str, Any] = {"kind": c.kind, "nullable": self._nullable[c.name]}
            if c.kind in ("numeric", "boolean"):
                p.update(type="number", minimum_seen=c.min, maximum_seen=c.max)
            elif c.kind == "datetime":
                p.update(type="string", format="date-time")
            else:
                p.update(type="string", categories_seen=c.categories)
            props[c.name] = p
        return {"type": "object", "properties": props, "required": self.names, "additionalProperties": False}

    # --- HTTP: all or nothing ---------------------------------------------------------------
    def validate(self, records: Any) -> Rows:
        """Validate a list of records; raise InvalidInput naming the first problems."""
        rows, problems = self.check(records)
        if problems:
            raise InvalidInput(problems)
        return rows

    # --- batch: report bad rows, keep good ones ----------------------------------------------
    def check(self, records: Any) -> tuple[Rows, list[Problem]]:
        """Validate every record; return the good ones as a frame and every problem found.

        ``Rows.frame`` keeps the position of each good record in its index.
        """
        if not isinstance(records, list):
            raise InvalidInput([Problem(None, "records", f"must be a list of objects, got {_kind(records)}")])
        if not records:
            raise InvalidInput([Problem(None, "records", "is empty; send at least one record")])
        if len(records) > self.max_records:
            raise InvalidInput([Problem(None, "records", f"holds {len(records)} records, more than the limit of {self.max_records}")])
        problems: list[Problem] = []
        try:
            valid = self._adapter.validate_python(records)
        except ValidationError as exc:
            seen: set[tuple[Any, Any]] = set()
            for e in exc.errors(include_url=False):
                p = _problem(e)
                if (p.record, p.field) not in seen:  # a union reports once per member type
                    seen.add((p.record, p.field))
                    problems.append(p)
            bad = {p.record for p in problems}
            keep = [i for i in range(len(records)) if i not in bad]
            valid = self._adapter.validate_python([records[i] for i in keep]) if keep else []
        else:
            keep = range(len(records))
        frame, more = self._frame(valid, list(keep))
        problems += more
        if more:
            bad = {p.record for p in more}
            frame = frame[~frame.index.isin(bad)]
        problems.sort(key=lambda p: (p.record if p.record is not None else -1))
        rows = self._drift(frame)
        if not problems:
            rows.records = valid
        return rows, problems

    def frame_of(self, valid: list[dict[str, Any]]) -> pd.DataFrame:
        """The input frame of records that already passed ``validate``."""
        return self._frame(valid, list(range(len(valid))))[0]

    def _frame(self, valid: list[dict[str, Any]], index: list[int]) -> tuple[pd.DataFrame, list[Problem]]:
        problems: list[Problem] = []
        cols: dict[str, Any] = {}
        for c in self.schema.features:
            values = [r[c.name] for r in valid]
            if c.kind == "categorical":
                arr = np.array([v if v is None or type(v) is str else str(v) for v in values], dtype=object)
                missing = np.array([v is None for v in values], dtype=bool)
            elif c.kind == "datetime":
                arr = pd.to_datetime(pd.Series(values, dtype=object), utc=True).dt.tz_localize(None).to_numpy()
                missing = np.isnat(arr)
            else:
                arr = np.array(values, dtype="float64")  # None -> NaN
                missing = np.array([v is None or v != v for v in values], dtype=bool)
                inf = np.isinf(arr)
                for i in np.flatnonzero(inf):
                    problems.append(Problem(index[i], c.name, f"must be a finite number, got {values[i]}"))
            if not self._nullable[c.name]:
                for i in np.flatnonzero(missing):
                    got = "NaN" if isinstance(values[i], float) else "null"
                    problems.append(Problem(index[i], c.name, f"must not be {got}: the training data had no missing values here"))
            cols[c.name] = arr
        return pd.DataFrame(cols, index=pd.Index(index), columns=self.names), problems

    def _drift(self, frame: pd.DataFrame) -> Rows:
        unknown: Counter[str] = Counter()
        out: Counter[str] = Counter()
        for name, cats in self._categories.items():
            n = sum(1 for v in frame[name].to_numpy() if v is not None and v not in cats)
            if n:
                unknown[name] = n
        for name, (lo, hi) in self._ranges.items():
            a = frame[name].to_numpy()
            with np.errstate(invalid="ignore"):
                n = int(np.count_nonzero((a < lo) | (a > hi)))
            if n:
                out[name] = n
        return Rows(frame, unknown_categories=unknown, out_of_range=out)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "a list"
    return type(v).__name__


def _shown(v: Any) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


_EXPECTED = {
    "float_type": "must be a number", "string_type": "must be a string", "int_type": "must be a number",
    "bool_type": "must be a boolean", "datetime_type": "must be an ISO 8601 date-time string",
    "finite_number": "must be a finite number",
}


def _problem(err: dict[str, Any]) -> Problem:
    loc = err["loc"]
    record = loc[0] if loc and isinstance(loc[0], int) else None
    name = loc[1] if len(loc) > 1 and isinstance(loc[1], str) else None
    typ = err["type"]
    got = err.get("input")
    if typ == "dict_type":
        return Problem(record, None, f"must be a JSON object of feature values, got {_kind(got)}")
    if typ == "missing":
        return Problem(record, name, "is required but missing")
    if typ == "extra_forbidden":
        return Problem(record, name, "is not a feature of this model")
    if typ.startswith("datetime") or typ.startswith("date_"):
        return Problem(record, name, f"must be an ISO 8601 date-time, got {_shown(got)} ({err['msg']})")
    # a union of types reports one error per member; the first says enough
    expected = _EXPECTED.get(typ, err["msg"])
    return Problem(record, name, f"{expected}, got {_kind(got)} {_shown(got)}")
