"""Predict: records validated against a version's schema, and batch scoring of whole files.

Validation is shared by the HTTP service (services/serving) and the batch stage here, so a
record the service refuses is a row the batch job reports, for the same reason.

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
from pydantic import (
    ConfigDict,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from typing_extensions import TypedDict

from components.data import MAX_CATEGORIES, PREDICTION, DataError, Schema

MAX_RECORDS = 100_000
FAST_PATH_MIN = 64  # below this the per-record path costs less than building columns
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

    def with_records(self, records: list[dict[str, Any]]) -> Rows:
        self.records = records
        return self


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
        if isinstance(records, list) and FAST_PATH_MIN <= len(records) <= self.max_records:
            fast = self._fast(records)
            if fast is not None:
                return fast
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

    def _fast(self, records: list[Any]) -> Rows | None:
        """Column-wise validation of a large, clean request; None sends it down the exact path.

        Accepts only what the per-record path accepts too; anything doubtful (a missing or
        extra key, a mixed column, a null where none is allowed) goes to ``check``, which
        names the record and the field.
        """
        n, keys = len(self.names), self._keys
        for r in records:
            if type(r) is not dict or len(r) != n or r.keys() != keys:
                return None
        frame = pd.DataFrame.from_records(records, columns=self.names)
        cols: dict[str, Any] = {}
        for c in self.schema.features:
            s = frame[c.name]
            nullable = self._nullable[c.name]
            if c.kind in ("numeric", "boolean"):
                if s.dtype.kind not in "fi":
                    return None
                arr = s.to_numpy(dtype="float64")
                if s.dtype.kind == "f" and not np.isfinite(arr).all() and (np.isinf(arr).any() or not nullable):
                    return None
            else:
                values = s.to_numpy(dtype=object)
                types = set(map(type, values))
                if not types <= {str, type(None)} or (type(None) in types and not nullable):
                    return None
                if c.kind == "categorical":
                    arr = values
                else:
                    try:
                        arr = pd.to_datetime(s, utc=True, format="ISO8601").dt.tz_localize(None).to_numpy()
                    except (ValueError, TypeError):
                        return None
            cols[c.name] = arr
        return self._drift(pd.DataFrame(cols, columns=self.names)).with_records(records)

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
    if typ.startswith(("datetime", "date_")):
        return Problem(record, name, f"must be an ISO 8601 date-time, got {_shown(got)} ({err['msg']})")
    # a union of types reports one error per member; the first says enough
    expected = _EXPECTED.get(typ, err["msg"])
    return Problem(record, name, f"{expected}, got {_kind(got)} {_shown(got)}")


# --- scoring ----------------------------------------------------------------------------------

def score_frame(model: Any, frame: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (and class probabilities) of a scikit-learn pipeline; preprocessing runs once."""
    steps = getattr(model, "steps", None)
    x = model[:-1].transform(frame) if steps and len(steps) > 1 else frame
    est = steps[-1][1] if steps else model
    values = np.asarray(est.predict(x))
    proba = est.predict_proba(x) if task == "classification" and hasattr(est, "predict_proba") else None
    return values, proba


def records_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of a frame as JSON-like records (missing as None, dates as ISO strings)."""
    out = frame.copy()
    for col in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[col]):
            out[col] = out[col].map(lambda t: None if pd.isna(t) else t.isoformat())
    out = out.astype(object).where(out.notna(), None)
    return out.to_dict("records")


# --- batch prediction ---------------------------------------------------------------------------

BATCH_ROWS = 50_000
ROW = "_row"
ERROR_COLUMNS = [ROW, "field", "problem"]


@dataclass(frozen=True)
class BatchResult:
    """What a batch prediction run did."""

    version: str
    rows_read: int
    rows_scored: int
    rows_rejected: int
    output: str
    errors_output: str | None
    first_problems: list[str]

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def predict_batch(settings: Any, data: str, output: str, version: str | None = None,
                  chunk_rows: int = BATCH_ROWS) -> BatchResult:
    """Score a CSV/Parquet file or prefix (local path, s3:// URI or store key) in chunks.

    Every row is validated like a request to the service; bad rows are written to
    ``<output>.errors.csv`` (row number, field, problem), good rows are scored with the
    registered model (``version``, default the champion) and written to ``output``
    (``.parquet`` or ``.csv``; a path without a suffix becomes a folder of Parquet parts).
    Memory stays bounded by ``chunk_rows`` whatever the size of the input.
    """
    import tempfile

    from components.registry import Registry
    from components.store import open_store

    registry = Registry(open_store(settings.store, settings), settings.model)
    if version is None:
        champ = registry.champion()
        if champ is None:
            raise DataError(f"model {settings.model} has no champion; pass --version or promote one")
        version = champ.version
    schema = registry.schema(version)
    model = registry.load_model(version)
    classes = [c.item() if isinstance(c, np.generic) else c for c in getattr(model, "classes_", [])]
    validator = RecordValidator(schema, max_records=max(chunk_rows, 1))
    read = scored = rejected = 0
    shown: list[str] = []
    with tempfile.TemporaryDirectory(prefix="flywheel-predict-") as tmp, \
            _Sink(output, settings, tmp) as sink, _Sink(_errors_path(output), settings, tmp, csv=True) as errors:
        for chunk in _chunks(data, settings, schema, chunk_rows, tmp):
            missing = [n for n in schema.feature_names if n not in chunk.columns]
            if missing:
                raise DataError(f"{data} lacks the feature column(s) {', '.join(missing)} of {settings.model} {version}")
            chunk.index = pd.RangeIndex(read, read + len(chunk))
            rows, problems = validator.check(records_of(_numbers_from_text(chunk[schema.feature_names], schema)))
            if problems:
                errors.write(pd.DataFrame([(read + (p.record or 0), p.field, p.problem) for p in problems],
                                          columns=ERROR_COLUMNS))
                shown += [f"row {read + (p.record or 0)}, field {p.field!r}: {p.problem}"
                          for p in problems[: max(0, 20 - len(shown))]]
            good = chunk.iloc[rows.frame.index.to_numpy()] if len(rows) else chunk.iloc[:0]
            if len(good):
                values, proba = score_frame(model, rows.frame, schema.task)
                out = good.reset_index(drop=True)
                out.insert(0, ROW, good.index.to_numpy())
                out[PREDICTION] = values
                if proba is not None:
                    for j, c in enumerate(classes):
                        out[f"_proba_{c}"] = proba[:, j]
                sink.write(out)
            read += len(chunk)
            scored += len(good)
            rejected += len(chunk) - len(good)
    if read == 0:
        raise DataError(f"{data} holds no rows")
    return BatchResult(version, read, scored, rejected, output, _errors_path(output) if rejected else None, shown)


def _numbers_from_text(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """CSV chunks hold numbers as text when one value in the chunk is not a number: parse the
    others, keep the bad ones as text so validation names them."""
    out = frame
    for c in schema.features:
        col = frame[c.name]
        if c.kind in ("numeric", "boolean") and col.dtype == object:
            num = pd.to_numeric(col, errors="coerce")
            bad = num.isna() & col.notna()
            if out is frame:
                out = frame.copy()
            out[c.name] = num.astype(object).where(~bad, col)
    return out


def _errors_path(output: str) -> str:
    base = output.rstrip("/")
    for suffix in (".parquet", ".csv"):
        base = base.removesuffix(suffix)
    return f"{base}.errors.csv"


def _chunks(data: str, settings: Any, schema: Schema, chunk_rows: int, tmp: str) -> Any:
    """DataFrames of at most ``chunk_rows`` rows from every file behind ``data``, in order."""
    import pyarrow.parquet as pq

    from components.store import open_store

    text_cols = {c.name: str for c in schema.features if c.kind in ("categorical", "datetime")}
    for name, path in _files(data, settings, tmp, open_store):
        if name.lower().endswith((".parquet", ".pq")):
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
        else:
            with pd.read_csv(path, chunksize=chunk_rows, dtype=text_cols, low_memory=False,
                             compression="gzip" if name.endswith(".gz") else None) as reader:
                yield from reader


def _files(data: str, settings: Any, tmp: str, open_store: Any) -> Any:
    """(name, local path) of each data file; objects in a store are downloaded one at a time."""
    from pathlib import Path

    from components.data import SUFFIXES

    local = Path(data.removeprefix("file://")).expanduser()
    if "://" not in data.removeprefix("file://") and local.exists():
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file() and p.name.lower().endswith(SUFFIXES))
        if not files:
            raise DataError(f"{data} holds no CSV or Parquet files")
        for p in files:
            yield p.name, str(p)
        return
    store, prefix = _store_and_key(data, settings, open_store)
    keys = [k for k in store.list(prefix) if k.lower().endswith(SUFFIXES)]
    if not keys:
        raise DataError(f"data source {data} does not exist or holds no CSV or Parquet files")
    for k in keys:
        path = Path(tmp) / "input" / k.replace("/", "_")
        path.parent.mkdir(parents=True, exist_ok=True)
        store.download_file(k, path)
        try:
            yield k, str(path)
        finally:
            path.unlink(missing_ok=True)


def _store_and_key(uri: str, settings: Any, open_store: Any) -> tuple[Any, str]:
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://"):].partition("/")
        return open_store(f"s3://{bucket}", settings), key
    return open_store(settings.store, settings), uri.removeprefix("store:")


class _Sink:
    """Writes chunks to a Parquet file, a CSV file or a folder of Parquet parts; local or in a store."""

    def __init__(self, target: str, settings: Any, tmp: str, csv: bool = False) -> None:
        from pathlib import Path

        self.target = target
        self.settings = settings
        self.remote = target.startswith(("s3://", "store:"))
        name = target.rstrip("/")
        self.format = "csv" if csv or name.endswith(".csv") else "parquet"
        self.folder = not name.endswith((".csv", ".parquet"))
        self.local = Path(tmp) / "output" / Path(name).name if self.remote else Path(name.removeprefix("file://")).expanduser()
        self._writer: Any = None
        self._parts = 0
        self._wrote = False

    def __enter__(self) -> _Sink:
        if self.folder:
            self.local.mkdir(parents=True, exist_ok=True)
        else:
            self.local.parent.mkdir(parents=True, exist_ok=True)
            self.local.unlink(missing_ok=True)
        return self

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.folder:
            frame.to_parquet(self.local / f"part-{self._parts:05d}.parquet", index=False)
            self._parts += 1
        elif self.format == "csv":
            frame.to_csv(self.local, mode="a", header=not self._wrote, index=False)
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.local, table.schema)
            self._writer.write_table(table.cast(self._writer.schema))
        self._wrote = True

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
        if exc[0] is not None or not self._wrote or not self.remote:
            return
        from components.store import open_store

        store, key = _store_and_key(self.target.rstrip("/"), self.settings, open_store)
        if self.folder:
            for p in sorted(self.local.glob("*.parquet")):
                store.upload_file(p, f"{key}/{p.name}")
        else:
            store.upload_file(self.local, key)
