"""Columnar request and answer bodies: Apache Arrow IPC streams and Parquet, beside JSON.

A body becomes a frame of records for the validator; an answer frame becomes a body in the
format the request came in. A body that cannot be read is a ``InvalidInput`` naming it.
"""

from __future__ import annotations

import io
from typing import Any, Literal

import pandas as pd

from components.validation import InvalidInput, Problem

Format = Literal["json", "arrow", "parquet"]
ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"
MEDIA_TYPES: dict[str, Format] = {
    "application/json": "json",
    ARROW: "arrow",
    "application/vnd.apache.arrow.file": "arrow",
    PARQUET: "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
}
CONTENT_TYPE: dict[Format, str] = {"json": "application/json", "arrow": ARROW, "parquet": PARQUET}


def format_of(content_type: str | None) -> Format | None:
    """The body format a Content-Type names (None for anything else)."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    return MEDIA_TYPES.get(media)


def read_frame(body: bytes, fmt: Format) -> pd.DataFrame:
    """Records of an Arrow IPC stream (or file) or a Parquet body, one column per field."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not body:
        raise InvalidInput([Problem(None, "body", f"is empty; send an {_name(fmt)} table of records")])
    try:
        if fmt == "parquet":
            table = pq.read_table(io.BytesIO(body))
        elif body[:6] == b"ARROW1":
            table = pa.ipc.open_file(pa.BufferReader(body)).read_all()
        else:
            table = pa.ipc.open_stream(pa.BufferReader(body)).read_all()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidInput([Problem(None, "body", f"is not a readable {_name(fmt)} table ({exc})")]) from None
    if len(set(table.column_names)) != len(table.column_names):
        raise InvalidInput([Problem(None, "body", f"names a column twice: {table.column_names}")])
    # Arrow strings stay Python strings: the model's encoders and the validator expect them
    return table.to_pandas(split_blocks=True, self_destruct=True)


def write_columns(columns: dict[str, Any], errors: Any, fmt: Format) -> bytes:
    """An answer (one array per output, in record order) and its ``error`` column as Arrow IPC or Parquet.

    Built straight from the arrays: a pandas frame in between would copy every column.
    """
    import pyarrow as pa

    arrays = {k: pa.array(v) for k, v in columns.items()}
    n = len(next(iter(arrays.values()))) if arrays else 0
    arrays["error"] = pa.nulls(n, pa.string()) if errors is None else pa.array(errors, type=pa.string())
    return _write_table(pa.table(arrays), fmt)


def _write_table(table: Any, fmt: Format) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(table, sink, compression="snappy")
    else:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    return sink.getvalue()


def _name(fmt: Format) -> str:
    return "Arrow IPC" if fmt == "arrow" else "Parquet"
