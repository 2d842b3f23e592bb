"""The data contract: how a dataset is read and normalised, and its schema (where it is: components/sources.py).

A dataset is one CSV or Parquet file or a prefix/folder of many, on local disk, in the
store, or at an ``s3://`` URI. Its schema (names, kinds, dtypes, categories, ranges, null
rates) is inferred at first ingest and written next to every model version.
"""

from __future__ import annotations

import json
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from components.settings import Settings
from components.sources import DataError, DatasetSpec, Located, Source, Task, check_unchanged, locate
from components.store import NotFound, ObjectInfo, StoreError, open_store

if TYPE_CHECKING:
    import pyarrow as pa

Kind = Literal["numeric", "categorical", "datetime", "boolean"]
MAX_CATEGORIES = 50
# Sparse columns: above INDICATOR_RATE missing, a numeric feature also gets a missing-indicator;
# above DROP_RATE missing it is dropped (too few values to learn from), with a warning.
INDICATOR_RATE = 0.5
DROP_RATE = 0.95


@dataclass
class Column:
    name: str
    kind: Kind
    dtype: str
    null_rate: float
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    missing_indicator: bool = False  # sparse: imputed, and whether it was missing is a feature too

    @property
    def action(self) -> str:
        """What training does with the column, in words."""
        if self.missing_indicator:
            return "kept: imputed, with a missing-indicator (sparse)"
        return "kept: imputed where missing" if self.null_rate > 0 else "kept"


@dataclass
class Schema:
    """The feature contract of a model version: training, serving and monitoring read it."""

    target: str
    task: Task
    features: list[Column]
    classes: list[Any] | None = None
    timestamp: str | None = None
    id_columns: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    # columns left out by a rule: {"name", "kind", "null_rate", "reason"} (absent in older schemas)
    dropped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.features]

    def column(self, name: str) -> Column:
        for c in self.features:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=_json_default)

    @classmethod
    def from_json(cls, text: str | bytes | dict) -> Schema:
        # kfp.local hands loop bodies JSON-looking strings already decoded
        d = dict(text) if isinstance(text, dict) else json.loads(text)
        d["features"] = [Column(**c) for c in d["features"]]
        return cls(**d)

    def column_table(self) -> list[dict[str, str]]:
        """Every column of the data with its kind, missing rate and what training does with it."""
        rows = [{"column": self.target, "kind": self.task, "missing": "", "action": "target"}]
        rows += [{"column": c.name, "kind": c.kind, "missing": f"{c.null_rate:.0%}", "action": c.action}
                 for c in self.features]
        rows += [{"column": d["name"], "kind": d.get("kind", ""), "missing": f"{d.get('null_rate', 0):.0%}",
                  "action": f"dropped: {d['reason']}"} for d in self.dropped]
        if self.timestamp:
            rows.append({"column": self.timestamp, "kind": "datetime", "missing": "", "action": "timestamp: orders the split; logged"})
        rows += [{"column": c, "kind": "id", "missing": "", "action": "id: not a feature; logged"} for c in self.id_columns]
        rows += [{"column": c, "kind": "", "missing": "", "action": "excluded (--exclude)"} for c in self.excluded]
        return rows

    def column_markdown(self) -> str:
        """``column_table`` as a Markdown table (the version card shows it)."""
        lines = ["| column | kind | missing | action |", "|---|---|---|---|"]
        lines += [f"| `{r['column']}` | {r['kind']} | {r['missing']} | {r['action']} |" for r in self.column_table()]
        return "\n".join(lines)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, pd.Timestamp):
        return o.isoformat()
    raise TypeError(type(o))


# --- locating and reading ----------------------------------------------------------------

def read_source(src: Source, settings: Settings, leave_out: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Read every file of a resolved source into one frame (each checked to be the object resolved).

    Columns named in ``leave_out`` (ids and excluded columns: never features) are not read; those the
    files hold are named in ``attrs["left_out"]``. Parquet sources are gathered as Arrow tables and
    converted once (``self_destruct``: each column's Arrow buffers are freed as it is converted),
    never as frames concatenated into a copy."""
    if all(f.lower().endswith((".parquet", ".pq")) for f in src.files):
        return _read_parquet_files(src, settings, leave_out)
    files = _read_files(src, settings, leave_out)
    first, cols = files[0][0], files[0][1].columns
    for f, fr in files[1:]:
        if list(fr.columns) != list(cols):
            raise DataError(f"{f} has columns {list(fr.columns)[:8]}…, unlike {first}")
    frame = files[0][1] if len(files) == 1 else pd.concat([fr for _, fr in files], ignore_index=True)
    frame.attrs["left_out"] = sorted(set().union(*(fr.attrs.get("left_out", ()) for _, fr in files)))
    return frame


SAMPLE_ROWS = 10_000


def sample(src: Source, settings: Settings, rows: int = SAMPLE_ROWS) -> pd.DataFrame:
    """The first ``rows`` rows of the source's first file, reading only what they need: a Parquet
    file's footer and first row group(s) (ranged reads in S3), a CSV file's first lines."""
    import pyarrow.parquet as pq

    obj = src.objects[0]
    try:
        with _opened(src, obj, settings) as f:
            if obj.key.lower().endswith((".parquet", ".pq")):
                pf = pq.ParquetFile(f)
                groups, held = [], 0
                while held < rows and len(groups) < pf.metadata.num_row_groups:  # only the row groups the rows are in
                    held += pf.metadata.row_group(len(groups)).num_rows
                    groups.append(len(groups))
                return pf.read_row_groups(groups).slice(0, rows).to_pandas() if groups else pf.schema_arrow.empty_table().to_pandas()
            return pd.read_csv(f, nrows=rows, compression="gzip" if obj.key.endswith(".gz") else None, low_memory=False)
    except (OSError, NotFound) as exc:
        if isinstance(exc, StoreError) and not isinstance(exc, NotFound):
            raise
        raise DataError(f"{obj.key} cannot be read: {exc}") from None
    except (ValueError, TypeError, NotImplementedError, EOFError, zlib.error) as exc:
        raise DataError(f"{obj.key} cannot be read as {_format(obj.key)}: {exc}") from None


def _format(name: str) -> str:
    return "Parquet" if name.lower().endswith((".parquet", ".pq")) else "CSV"


def _opened(src: Source, obj: ObjectInfo, settings: Settings) -> Any:
    """A binary file of ``obj``: a local file checked against its resolved size and mtime, or a
    store object whose every read carries its resolved ETag."""
    if src.store_uri is None or src.store_uri.startswith("file://"):
        path = Path(obj.key) if src.store_uri is None else Path(open_store(src.store_uri, settings).url(obj.key))
        check_unchanged(obj, path)
        return open(path, "rb")
    return open_store(src.store_uri, settings).open_read(obj.key, obj.etag)


# --- normalising ---------------------------------------------------------------------------

def normalise(frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """Parse dates, make booleans 1.0/0.0 (named in ``attrs["boolean_columns"]``), keep strings as strings.

    Never reorders rows, and never changes ``frame``: the result is a shallow copy whose changed columns are new.
    """
    frame = frame.copy(deep=False)
    frame.columns = [str(c).strip() for c in frame.columns]
    booleans = []
    for col in frame.columns:
        new, kind = normalise_column(col, frame[col], spec)
        if new is not None:
            frame[col] = new
        if kind == "boolean":
            booleans.append(col)
    _check_timestamp(spec, frame[spec.timestamp].dtype if spec.timestamp and spec.timestamp in frame else None)
    frame.attrs["boolean_columns"] = booleans
    return frame


def normalise_column(name: str, s: pd.Series, spec: DatasetSpec) -> tuple[pd.Series | None, str]:
    """One column as ``normalise`` makes it, and what it became ("boolean", "dates", "text", "time"); None: unchanged."""
    if name == spec.target or name in spec.id_columns:
        return None, ""
    if is_boolean(s):
        return boolean_floats(s), "boolean"
    if s.dtype == object or pd.api.types.is_string_dtype(s):
        if name == spec.timestamp or _looks_like_dates(s):
            parsed = _parse_dates(s)
            if parsed is not None:
                return parsed, "dates"
        return s.astype("object").where(s.notna(), None), "text"
    if pd.api.types.is_datetime64_any_dtype(s):
        return pd.to_datetime(s, utc=True).dt.tz_localize(None), "time"
    return None, ""


def _check_timestamp(spec: DatasetSpec, dtype: Any) -> None:
    """The timestamp column (``dtype`` after normalising; None when absent) holds dates."""
    if dtype is not None and not pd.api.types.is_datetime64_any_dtype(dtype):
        raise DataError(f"timestamp column {spec.timestamp!r} does not hold dates")


TEXT_DECIDING_ROWS = 1000  # is_boolean's and _looks_like_dates's look at a column's first values


def normalise_table(table: pa.Table, spec: DatasetSpec) -> tuple[pa.Table, list[str]]:
    """``normalise`` on an Arrow table, one column at a time (one column as pandas at once, never the table);
    returns the table and its boolean columns. Text stays Arrow text: only changed columns are converted back."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = table.rename_columns([str(c).strip() for c in table.column_names]).replace_schema_metadata(None)
    booleans = []
    for i, name in enumerate(table.column_names):
        column = table.column(i)
        if (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) and name != spec.timestamp:
            # booleans and dates are told by a column's first values (is_boolean, _looks_like_dates): text
            # whose first values are neither is kept as Arrow text, never converted to Python strings
            _, kind = normalise_column(name, pc.drop_null(column).slice(0, TEXT_DECIDING_ROWS).to_pandas(), spec)
            if kind == "text":
                continue
        new, kind = normalise_column(name, column.to_pandas(), spec)
        if new is not None:
            table = table.set_column(i, name, pa.Array.from_pandas(new))
        if kind == "boolean":
            booleans.append(name)
        del column, new
    if spec.timestamp and spec.timestamp in table.column_names:
        _check_timestamp(spec, table.column(spec.timestamp).type.to_pandas_dtype())
    return table, booleans


class TableColumns:
    """An Arrow table as ``infer_schema`` reads a frame: its column names, each column as pandas when asked
    (one at a time), and ``attrs``. Inferring a schema then holds one column as pandas, not the table."""

    def __init__(self, table: pa.Table, attrs: dict[str, Any]) -> None:
        self.table, self.attrs = table, attrs

    @property
    def columns(self) -> pd.Index:
        return pd.Index(self.table.column_names)

    def __getitem__(self, name: str) -> pd.Series:
        return self.table.column(name).to_pandas().rename(name)


_BOOLEAN_TEXT = {"true": 1.0, "false": 0.0}


def is_boolean(s: pd.Series) -> bool:
    """A column of true/false values: a bool dtype, Python booleans, or the strings "true"/"false" (any case)."""
    if pd.api.types.is_bool_dtype(s.dtype):
        return True
    if s.dtype != object:
        return False
    values = s.dropna()
    if values.empty:
        return False
    kinds = set(map(type, values.head(1000)))
    if kinds <= {bool, np.bool_}:
        return bool(values.map(lambda v: isinstance(v, (bool, np.bool_))).all())
    if kinds == {str}:  # the first values decide most columns without a text copy of the whole column
        return all(v.strip().lower() in _BOOLEAN_TEXT for v in values.head(1000)) and \
            bool(values.str.strip().str.lower().isin(_BOOLEAN_TEXT).all())
    return False


def boolean_floats(s: pd.Series) -> pd.Series:
    """True/False (or "true"/"false") as 1.0/0.0, missing as NaN: what the model is trained on."""
    if s.dtype == object:
        return s.map(lambda v: _BOOLEAN_TEXT[v.strip().lower()] if isinstance(v, str) else
                     (np.nan if v is None or v != v else float(v))).astype("float64")
    return s.astype("float64") if s.dtype == bool else s.astype("Float64").astype("float64")


def _parse_dates(s: pd.Series) -> pd.Series | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(s, errors="coerce", utc=True, format="mixed")
    if parsed.notna().sum() < 0.9 * s.notna().sum():
        return None
    return parsed.dt.tz_localize(None)


def _looks_like_dates(s: pd.Series) -> bool:
    sample = s.dropna().astype(str).head(50)
    if sample.empty:
        return False
    hits = sample.str.match(r"^\d{4}-\d{1,2}-\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")
    return bool(hits.mean() > 0.9)


def infer_task(target: pd.Series) -> Task:
    """Classification for labels (strings, booleans, few integer values), else regression."""
    s = target.dropna()
    if s.dtype == object or s.dtype == bool or isinstance(s.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(s):
        return "classification"
    nunique = s.nunique()
    whole = pd.api.types.is_integer_dtype(s) or (pd.api.types.is_float_dtype(s) and np.all(np.mod(s.to_numpy(), 1) == 0))
    if whole and nunique <= 20 and nunique <= max(2, 0.05 * len(s)):
        return "classification"
    return "regression"


def _is_id_like(name: str, s: pd.Series) -> bool:
    n = s.notna().sum()
    if n < 20:
        return False
    lname = name.lower()
    named = lname == "id" or lname.endswith(("_id", "uuid")) or lname.startswith("id_")
    unique_ratio = s.nunique() / n
    if s.dtype == object:
        return unique_ratio > 0.95 and (named or s.dropna().astype(str).str.len().median() >= 8)
    if pd.api.types.is_integer_dtype(s):
        return named and unique_ratio > 0.95
    return False


def infer_schema(frame: pd.DataFrame | TableColumns, spec: DatasetSpec) -> Schema:
    """Infer the feature schema; id-like and excluded columns are recorded, not used."""
    if spec.target not in frame.columns:
        raise DataError(f"target column {spec.target!r} is not in the data (columns: {', '.join(map(str, frame.columns[:20]))})")
    for col in (*spec.exclude, *spec.id_columns):
        if col not in frame.columns and col not in frame.attrs.get("left_out", ()):  # left_out: present, not read
            raise DataError(f"column {col!r} given to leave out is not in the data")
    if spec.timestamp and spec.timestamp not in frame.columns:
        raise DataError(f"timestamp column {spec.timestamp!r} is not in the data")
    task = spec.task or infer_task(frame[spec.target])
    booleans = set(frame.attrs.get("boolean_columns", ()))
    ids = list(spec.id_columns)
    features: list[Column] = []
    dropped: list[dict[str, Any]] = []
    for col in frame.columns:
        if col in (spec.target, spec.timestamp) or col in spec.exclude or col in ids:
            continue
        s = frame[col]
        if _is_id_like(col, s):
            ids.append(col)
            continue
        null_rate = float(s.isna().mean()) if len(s) else 0.0
        why = _uninformative(s, null_rate)
        if why:
            kind = "boolean" if col in booleans or is_boolean(s) else _kind_of(s)
            dropped.append({"name": col, "kind": kind, "null_rate": null_rate, "reason": why})
            continue
        if col in booleans or is_boolean(s):
            features.append(Column(col, "boolean", "bool", null_rate, 0.0, 1.0))
        elif pd.api.types.is_datetime64_any_dtype(s):
            lo, hi = s.min(), s.max()
            features.append(Column(col, "datetime", "datetime64[ns]", null_rate,
                                   None if pd.isna(lo) else lo.timestamp(), None if pd.isna(hi) else hi.timestamp()))
        elif pd.api.types.is_numeric_dtype(s):
            lo, hi = s.min(), s.max()
            features.append(Column(col, "numeric", str(s.dtype), null_rate,
                                   None if pd.isna(lo) else float(lo), None if pd.isna(hi) else float(hi)))
        else:
            counts = s.dropna().astype(str).value_counts()
            cats = sorted(counts.index[:MAX_CATEGORIES].tolist())
            features.append(Column(col, "categorical", "object", null_rate, categories=cats))
    classes = None
    if task == "classification":
        classes = sorted(frame[spec.target].dropna().unique().tolist(), key=str)
        classes = [c.item() if isinstance(c, np.generic) else c for c in classes]
    for c in features:
        c.missing_indicator = c.kind in ("numeric", "boolean") and c.null_rate > INDICATOR_RATE
    return Schema(spec.target, task, features, classes, spec.timestamp, ids, list(spec.exclude), dropped)


def _uninformative(s: pd.Series, null_rate: float) -> str | None:
    """Why a column cannot teach the model anything (None when it can)."""
    if len(s) and null_rate == 1.0:
        return "entirely empty"
    if null_rate > DROP_RATE:
        return f"{null_rate:.0%} missing (more than {DROP_RATE:.0%})"
    if len(s) and s.nunique(dropna=True) <= 1:
        return f"constant ({s.dropna().iloc[0]!r} in every row)" if s.notna().any() else "entirely empty"
    return None


def _kind_of(s: pd.Series) -> str:
    if pd.api.types.is_datetime64_any_dtype(s):
        return "datetime"
    return "numeric" if pd.api.types.is_numeric_dtype(s) else "categorical"


def _located(spec: DatasetSpec, settings: Settings, located: Located | None) -> Located:
    if located is not None:
        return located
    try:
        return locate(spec, settings)
    except StoreError as exc:
        raise DataError(str(exc)) from None


def load_table(spec: DatasetSpec, settings: Settings, located: Located | None = None) -> tuple[TableColumns, Located]:
    """``load`` as an Arrow table (the ingest stage's body), in ``TableColumns`` with the attrs ``infer_schema`` reads.

    A Parquet source without added parts is read and normalised as Arrow, column by column: the task
    holds the table once in Arrow's compact form (text as Arrow text, not Python strings). Any other
    (CSV, or a retrain's added parts, which ``conform`` reads as frames) is ``load``'s frame, converted.
    """
    import pyarrow as pa

    located = _located(spec, settings, located)
    src = located.source
    if located.additions or not all(f.lower().endswith((".parquet", ".pq")) for f in src.files):
        frame, _ = load(spec, settings, located)
        attrs = dict(frame.attrs)
        return TableColumns(pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None), attrs), located
    table, left_out = _read_parquet_table(src, settings, frozenset((*spec.id_columns, *spec.exclude)) - {REQUEST_ID})
    table, booleans = normalise_table(table, spec)
    return TableColumns(table, {"left_out": left_out, "boolean_columns": booleans}), located


def load(spec: DatasetSpec, settings: Settings, located: Located | None = None) -> tuple[pd.DataFrame, Located]:
    """Read and normalise a dataset as a frame: the source's files, then the
    parts added to it, each conformed to the source's column types (``conform``). ``located``: the
    run's one resolution (the fingerprint step's); resolved here only when not given."""
    located = _located(spec, settings, located)
    # ids and excluded columns are never features: not read (infer_schema records them from the spec),
    # except the request id that tells production rows apart
    frame = read_source(located.source, settings, frozenset((*spec.id_columns, *spec.exclude)) - {REQUEST_ID})
    left_out = frame.attrs.get("left_out", [])
    added = [conform(part, frame, spec.target, name)
             for src in located.additions for name, part in _read_files(src, settings)]
    if added:
        rows = pd.concat(added, ignore_index=True)
        if REQUEST_ID in rows:  # a production row is read once, even from a source that holds it already
            held = frame[REQUEST_ID].dropna() if REQUEST_ID in frame else ()
            rows = rows[~rows[REQUEST_ID].isin(held) & ~rows[REQUEST_ID].duplicated()]
        frame = pd.concat([frame, rows], ignore_index=True)
    frame.attrs["left_out"] = left_out
    return normalise(frame, spec), located


def conform(part: pd.DataFrame, like: pd.DataFrame, target: str, name: str) -> pd.DataFrame:
    """``part``'s rows in ``like``'s columns and column types: how rows added to a source are read.

    The source is the reference because ingest infers the schema from it and it is never
    rewritten: a date-time the source holds as text and the part as a timestamp (the log's
    type) becomes ISO 8601 text, which ``normalise`` then parses with the source's own text,
    into one date-time column; text where the source holds date-times is parsed (unparsable
    values become missing); numbers and booleans follow the source alike. A column the part
    lacks is missing in its rows; one the source lacks is dropped, except the request id that
    tells production rows apart. ``name`` (the part's file) is what an error names.
    """
    if target not in part.columns:
        raise DataError(f"{name} has no column {target!r} (the target): its rows cannot be added to the data")
    columns = {col: _like(part[col], like[col]) if col in part.columns else _missing(like[col], part.index)
               for col in like.columns}
    if REQUEST_ID in part.columns and REQUEST_ID not in like.columns:
        columns[REQUEST_ID] = part[REQUEST_ID].astype(object)
    return pd.DataFrame(columns, index=part.index)


def _like(values: pd.Series, base: pd.Series) -> pd.Series:
    """``values`` as the type ``base`` has (see ``conform``)."""
    if pd.api.types.is_datetime64_any_dtype(base):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stamps = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
        return stamps.dt.tz_localize(None) if base.dt.tz is None else stamps.dt.tz_convert(base.dt.tz)
    if pd.api.types.is_bool_dtype(base):
        return pd.Series([None if pd.isna(v) else bool(v) for v in values], index=values.index, dtype=object)
    if pd.api.types.is_numeric_dtype(base):
        return pd.to_numeric(values, errors="coerce")
    if pd.api.types.is_datetime64_any_dtype(values):  # text date-times in the source
        naive = values.dt.tz_convert("UTC").dt.tz_localize(None) if values.dt.tz is not None else values
        fraction = bool((naive.dt.microsecond.fillna(0) != 0).any())
        text = naive.dt.strftime("%Y-%m-%dT%H:%M:%S.%f" if fraction else "%Y-%m-%dT%H:%M:%S")
        return pd.Series(np.where(naive.isna(), None, text), index=values.index)
    if (pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values)) and is_boolean(base):
        return pd.Series([None if pd.isna(v) else ("true" if v else "false") for v in values], index=values.index)
    if pd.api.types.is_numeric_dtype(values):  # categories as text: whole numbers as the service writes them
        return pd.Series([None if pd.isna(v) else (str(int(v)) if float(v).is_integer() else str(v)) for v in values],
                         index=values.index, dtype=object)
    return values.astype(object).where(values.notna(), None)


def _missing(base: pd.Series, index: pd.Index) -> pd.Series:
    """A column of missing values that keeps ``base``'s kind once the two are concatenated."""
    if pd.api.types.is_datetime64_any_dtype(base):
        return pd.Series(pd.NaT, index=index, dtype=base.dtype)
    if pd.api.types.is_numeric_dtype(base) and not pd.api.types.is_bool_dtype(base):
        return pd.Series(np.nan, index=index, dtype="float64")
    return pd.Series(None, index=index, dtype=object)


def _read_files(src: Source, settings: Settings, leave_out: frozenset[str] = frozenset()) -> list[tuple[str, pd.DataFrame]]:
    """Each file of ``src`` as a frame, without the columns of ``leave_out``."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="flywheel-read-") as tmp:
        return [(name, _read_path(name, path, leave_out)) for name, path in local_files(src, settings, tmp)]


def _read_parquet_files(src: Source, settings: Settings, leave_out: frozenset[str] = frozenset()) -> pd.DataFrame:
    table, left_out = _read_parquet_table(src, settings, leave_out)
    frame = table.to_pandas(self_destruct=True, split_blocks=True)
    frame.attrs["left_out"] = left_out
    return frame


def _read_parquet_table(src: Source, settings: Settings, leave_out: frozenset[str] = frozenset()) -> tuple[pa.Table, list[str]]:
    """Every Parquet file of ``src`` as one Arrow table without the columns of ``leave_out``, and the
    names of those the files hold."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    tables: list[pa.Table] = []
    left_out: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="flywheel-read-") as tmp:
        for name, path in local_files(src, settings, tmp):
            try:
                names = pq.read_schema(path).names
                table = pq.read_table(path, columns=[c for c in names if str(c).strip() not in leave_out])
                left_out.update(c for c in names if str(c).strip() in leave_out)
            except (ValueError, TypeError, NotImplementedError, OSError, EOFError) as exc:  # ArrowInvalid is a ValueError
                raise DataError(f"{name} cannot be read as Parquet: {exc}") from None
            if tables and table.column_names != tables[0].column_names:
                raise DataError(f"{name} has columns {table.column_names[:8]}…, unlike {src.files[0]}")
            tables.append(table)  # in memory: the downloaded file is removed as the loop moves on
    try:
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"the files of {src.files[0].rsplit('/', 1)[0]} disagree on column types: {exc}") from None
    return table, sorted(left_out)


def local_files(src: Source, settings: Settings, tmp: str) -> Iterator[tuple[str, Path]]:
    """(name, local path) of each file of ``src``, one at a time: a local file in place (checked against
    its resolved size and mtime), a store object downloaded into ``tmp`` with If-Match on its resolved
    ETag (a changed object raises ``Changed``) and removed once the caller moves on."""
    for obj in src.objects:
        try:
            if src.store_uri is None or src.store_uri.startswith("file://"):
                path = Path(obj.key) if src.store_uri is None else Path(open_store(src.store_uri, settings).url(obj.key))
                check_unchanged(obj, path)
                yield obj.key, path
                continue
            path = Path(tmp) / "input" / obj.key.replace("/", "_")
            path.parent.mkdir(parents=True, exist_ok=True)
            open_store(src.store_uri, settings).download_file(obj.key, path, obj.etag)
        except (OSError, NotFound) as exc:
            raise DataError(f"{obj.key} cannot be read: {exc}") from None
        try:
            yield obj.key, path
        finally:
            path.unlink(missing_ok=True)


def _read_path(name: str, f: Any, leave_out: frozenset[str] = frozenset()) -> pd.DataFrame:
    seen: list[str] = []

    def keep(column: Any) -> bool:
        if str(column).strip() in leave_out:
            seen.append(str(column))
            return False
        return True

    try:
        if name.lower().endswith((".parquet", ".pq")):
            frame = pd.read_parquet(f)
            frame = frame[[c for c in frame.columns if keep(c)]] if leave_out else frame
        else:
            frame = pd.read_csv(f, compression="gzip" if name.endswith(".gz") else None, low_memory=False,
                                usecols=keep if leave_out else None)
        frame.attrs["left_out"] = seen
        return frame
    except (ValueError, TypeError, NotImplementedError, OSError, EOFError, zlib.error) as exc:  # what pandas and pyarrow raise for a bad file (ArrowInvalid is a ValueError)
        raise DataError(f"{name} cannot be read as {_format(name)}: {exc}") from None


# --- column names of the logs every service writes (prefixed so no feature can clash) -------
REQUEST_ID = "_request_id"
TIME = "_time"
MODEL_VERSION = "_model_version"
PREDICTION = "_prediction"
LABEL = "_label"
