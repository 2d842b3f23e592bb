"""Records as the log writes them: Arrow batches per day, Parquet parts, quarantined JSON lines.

The pure half of the record log (``prediction_log.RecordLog``): what ``append`` converts on
the request path, how a buffer becomes one part per (day, schema), and how a part is encoded
as Parquet (per-column codecs and statistics). Nothing here touches a file or the store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.data import MODEL_VERSION, PREDICTION, REQUEST_ID, TIME, Schema

log = logging.getLogger("flywheel.serving")
STAMP = "%Y%m%dT%H%M%S%f"  # a part's name starts with the time of its oldest record
# Arrow types of a feature as the serving validation hands it to the model, per kind
KIND_TYPES = {"numeric": pa.float64(), "boolean": pa.float64(), "categorical": pa.string(), "datetime": pa.timestamp("ns")}
# What ``encode_records`` is handed for a column's type: column name -> Arrow type
Types = Mapping[str, pa.DataType]


def log_types(schema: Schema) -> dict[str, pa.DataType]:
    """The Arrow type of every logged column a model version's schema fixes.

    The version's features (by kind), the id and timestamp columns sent through (as text) and
    the log's own columns. A part's schema then follows the model, not the values of one
    flush: a column that happens to be all null in an append is typed as the model says, not
    as Arrow's ``null``, so it does not start a part of its own. A classifier's prediction
    keeps its classes' type (never null, so never in doubt).
    """
    types: dict[str, pa.DataType] = {REQUEST_ID: pa.string(), TIME: pa.timestamp("ns", tz="UTC"), MODEL_VERSION: pa.string()}
    types.update({c: pa.string() for c in (*schema.id_columns, *([schema.timestamp] if schema.timestamp else []))})
    types.update({c.name: KIND_TYPES[c.kind] for c in schema.features})
    if schema.task == "regression":
        types[PREDICTION] = pa.float64()
    return types


# What ``append`` takes: a frame, or columns of equal length (numpy arrays, pandas or Arrow arrays, lists)
Records = Union[pd.DataFrame, Mapping[str, Any]]


@dataclass
class Batch:
    day: str
    batch: pa.RecordBatch
    since: float  # wall time it was appended


@dataclass
class Entry:
    """Records converted for the log (``RecordLog.encode``), not yet queued."""

    batches: list[Batch]
    lines: list[tuple[str, str, float]]  # quarantined records: (day, JSON line, since)
    rows: int  # every record, the quarantined ones included


@dataclass
class Part:
    """One file of the log: a Parquet part (a table, encoded as it is written) or quarantine lines."""

    key: str
    records: int
    since: float  # wall time of its oldest record
    day: str
    table: pa.Table | None = None  # a Parquet part
    text: bytes = b""  # a quarantine part: JSON lines
    unwritten: bool = field(default=True, compare=False)  # its records count against the log's room

    @property
    def quarantine(self) -> bool:
        return self.table is None

    @property
    def size(self) -> int:
        """Bytes it takes on disk, estimated before it is written (a table's size in memory)."""
        return len(self.text) if self.table is None else self.table.nbytes

    def write(self, sink: pa.NativeFile) -> None:
        """Write the part to ``sink``; raises ``Unencodable`` when Parquet cannot hold the table."""
        if self.table is None:
            sink.write(self.text)
        else:
            _write_parquet(self.table, sink)

    def encoded(self) -> bytes:
        """The part's file, in memory (for a store write when the spill directory refuses it)."""
        out = pa.BufferOutputStream()
        self.write(out)
        return out.getvalue().to_pybytes()


class Unencodable(Exception):
    """Parquet cannot hold a part's table (a type it has no column for)."""



def rows_of(records: Records) -> int:
    """Records in an append; columns of unequal length are the caller's error, refused before anything is queued."""
    if isinstance(records, pd.DataFrame):
        return len(records)
    lengths = {name: len(values) for name, values in records.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns of unequal length cannot be logged: {lengths}")
    return next(iter(lengths.values()), 0)


def encode_records(records: Records, now: float, types: Types | None = None) -> tuple[list[Batch], list[tuple[str, str, float]]]:
    """Arrow batches of the records (columns in ``types`` in that type); a record that cannot be converted becomes a quarantined JSON line."""
    try:
        return [Batch(day, batch, now) for day, batch in _batches(records, types)], []
    except Exception:  # noqa: BLE001 - some record does not convert: find which, keep the others
        pass
    if not isinstance(records, pd.DataFrame):  # the slow path works on a frame, built only here
        records = pd.DataFrame({k: _pandas_column(v) for k, v in records.items()})
    batches, lines = [], []
    for i in range(len(records)):
        row = records.iloc[i:i + 1]
        try:
            batches += [Batch(day, batch, now) for day, batch in _batches(row, types)]
        except Exception as exc:  # noqa: BLE001 - this record alone is quarantined
            line = json_line({str(k): v for k, v in row.iloc[0].to_dict().items()}, f"{type(exc).__name__}: {exc}")
            log.error("a record cannot be logged as Parquet (%s: %s); it is quarantined by itself: %s",
                      type(exc).__name__, exc, line[:300])
            lines.append((_day_of(row), line, now))
    return batches, lines


def _batches(records: Records, types: Types | None = None) -> list[tuple[str, pa.RecordBatch]]:
    # column by column: about twice as fast as from_pandas, which builds pandas metadata we never read
    columns = records.items() if not isinstance(records, pd.DataFrame) else ((c, records[c]) for c in records.columns)
    names, arrays = [], []
    for name, values in columns:
        names.append(str(name))
        arrays.append(_typed(_arrow(values), types.get(str(name)) if types else None))
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    times = batch.column(TIME)
    if pa.types.is_timestamp(times.type):
        span = pc.min_max(times)
        first, last = span["min"].as_py(), span["max"].as_py()
        if first is not None and _utc_day(first) == _utc_day(last):  # the usual case: one request, one time
            return [(_utc_day(first), batch)]
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")  # a record without a time is today's
    days = pd.to_datetime(pd.Series(_pandas_column(records[TIME])), utc=True).dt.strftime("%Y-%m-%d").fillna(today).to_numpy()
    return [(day, batch.filter(pa.array(days == day))) for day in sorted(set(days))]


def _arrow(values: Any) -> pa.Array:
    """A column as Arrow, NaN and None as null (``from_pandas``).

    A float numpy column is wrapped without a copy, its NaN found with numpy: Arrow's own
    NaN scan cost 0.2 ms per 100k values, ten times numpy's, for each of a request's columns.
    """
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, np.ndarray) and values.dtype.kind == "f" and values.ndim == 1:
        null = np.isnan(values)
        return pa.array(values, mask=null) if null.any() else pa.array(values)
    return pa.array(values, from_pandas=True)


def _typed(array: pa.Array, want: pa.DataType | None) -> pa.Array:
    """``array`` in the type the model's schema gives its column; as it is when it has none, or does not cast.

    A value the type cannot hold is the model's input, already validated: it keeps the type
    Arrow found (a part of its own, as before), rather than losing the record.
    """
    if want is None or array.type == want:
        return array
    try:
        return array.cast(want)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return array


def _pandas_column(values: Any) -> Any:
    """A column as a pandas array or a plain sequence: no index to align on, Arrow arrays kept Arrow-backed."""
    if isinstance(values, pa.Array):
        return pd.arrays.ArrowExtensionArray(values)
    if isinstance(values, pd.Series):
        return values.array
    return values


def _utc_day(t: dt.datetime) -> str:
    return (t.astimezone(dt.UTC) if t.tzinfo else t).strftime("%Y-%m-%d")


def _day_of(row: pd.DataFrame) -> str:
    try:
        return pd.to_datetime(row[TIME], utc=True).iloc[0].strftime("%Y-%m-%d")
    except Exception:  # noqa: BLE001 - a record with an odd time still gets a day
        return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


def json_line(record: dict[str, Any], error: str) -> str:
    """A quarantined record: the record as JSON, with why it could not be logged as Parquet."""
    return json.dumps({"error": error, "record": record}, default=_plain, allow_nan=True)


def _plain(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if hasattr(v, "item"):
        with contextlib.suppress(Exception):
            return v.item()
    return repr(v)


def parts_of(prefix: str, batches: list[Batch], lines: list[tuple[str, str, float]],
           quarantine_key: Any) -> list[Part]:
    """One Parquet part per (day, schema) and one quarantine part per day, oldest first."""
    # One day's batches normally share one schema (the model's log types fix it), and Arrow
    # checks that while building the table with the GIL released. Grouping them in Python by
    # hashing (or comparing) each batch's schema held the GIL for 20 to 50 ms per flush of the
    # 1,000 one-record batches of one client: a stall that every request in flight waited through.
    days: dict[str, list[Batch]] = {}
    for b in batches:
        days.setdefault(b.day, []).append(b)
    groups: list[tuple[str, list[Batch], pa.Table]] = []
    for day, of_day in days.items():
        try:
            groups.append((day, of_day, pa.Table.from_batches([b.batch for b in of_day])))
        except pa.ArrowInvalid:  # schemas differ within the day: one part per schema
            groups += [(day, g, pa.Table.from_batches([b.batch for b in g])) for g in _by_schema(of_day)]
    parts = []
    for day, group, table in groups:
        since = min(b.since for b in group)
        # one chunk per column: the batches of one request each (a few rows apiece at one client)
        # made the size estimate and the Parquet writer walk hundreds of chunks per column
        if len(group) > 1:
            table = table.combine_chunks()
        parts.append(Part(f"{prefix}/date={day}/{part_name(since, 'parquet')}", table.num_rows, since, day, table=table))
    by_day: dict[str, list[tuple[str, float]]] = {}
    for day, line, since in lines:
        by_day.setdefault(day, []).append((line, since))
    for day, items in by_day.items():
        since = min(s for _, s in items)
        parts.append(Part(quarantine_key(day, since), len(items), since, day,
                           text="".join(f"{line}\n" for line, _ in items).encode()))
    return sorted(parts, key=lambda p: p.since)


def _by_schema(batches: list[Batch]) -> list[list[Batch]]:
    """The batches grouped by equal schema, in order of first appearance."""
    groups: list[tuple[pa.Schema, list[Batch]]] = []
    for b in batches:
        schema = b.batch.schema
        group = next((g for s, g in groups if s.equals(schema)), None)
        if group is None:
            groups.append((schema, [b]))
        else:
            group.append(b)
    return [g for _, g in groups]


def _write_parquet(table: pa.Table, sink: pa.NativeFile) -> None:
    """The table as one Parquet file into ``sink``; ``Unencodable`` if Parquet has no column for a type."""
    # dictionary-encode text columns only: unique doubles (features, probabilities) gain nothing
    # from a dictionary and it was half the cost of writing a large part; nor do request ids,
    # one per record (the writer builds the dictionary, then falls back to plain)
    text = [f.name for f in table.schema
            if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)) and f.name != REQUEST_ID]
    # min/max statistics for the columns the log adds (time, version, prediction: what queries
    # filter on), not for each feature: they were a seventh of the cost of a part of doubles.
    # Nor for request ids: random, so every part spans them all, and comparing 100k of them as
    # text was a third of the cost of a 100k-row part (the next large append waits for it)
    stats = [name for name in table.column_names if name.startswith("_") and name != REQUEST_ID]
    try:
        pq.write_table(table, sink, use_dictionary=text, compression=_codecs(table), write_statistics=stats)
    except OSError:  # the sink's: the disk, not the records
        raise
    except Exception as exc:  # Parquet refuses the table: say so, as one kind of error
        raise Unencodable(f"{type(exc).__name__}: {exc}") from exc


_PROBE_BYTES = 64 << 10  # the sample of a column's values that decides its codec
# snappy must take at least a third off the sample. A float32 output widened to float64 (an
# ONNX model's predictions) shrinks by about a quarter: compressing 100,000 of them took 1.4 ms
# of a 100k-row part's 10, to save 0.2 MB of a 10 MB file
_WORTH_COMPRESSING = 0.67


def _codecs(table: pa.Table) -> dict[str, str]:
    """Per column: snappy where a sample of its values shrinks, none where it would not.

    Measured values (a price, a count, a category) shrink two to five times; noise-like doubles
    (continuous measurements, embeddings) do not shrink at all, and compressing them anyway was
    a fifth of the cost of writing a part (100,000 rows of 13 such doubles: 19 ms, 16 with this).
    """
    return {name: "snappy" if _shrinks(column) else "none" for name, column in zip(table.column_names, table.columns)}


def _shrinks(column: pa.ChunkedArray) -> bool:
    chunk = next((c for c in column.chunks if len(c)), None)
    values = chunk.buffers()[-1] if chunk is not None else None  # the values; for text, the characters
    if values is None or values.size < 4096:  # too little to matter either way
        return True
    sample = values.slice(0, min(values.size, _PROBE_BYTES))
    return pa.compress(sample, "snappy", asbytes=False).size <= _WORTH_COMPRESSING * sample.size


def part_name(since: float, ext: str) -> str:
    stamp = dt.datetime.fromtimestamp(since, dt.UTC).strftime(STAMP)
    return f"{stamp}-{uuid.uuid4().hex[:12]}.{ext}"

