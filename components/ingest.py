"""Ingest: read the user's data, normalise types, fingerprint the content, infer the schema.

pandas comes with the reading (components.data), not with this module: the fingerprint task,
which runs every time, reads no rows. The data is read and normalised as an Arrow table, one
column at a time as pandas (components/data.py ``load_table``), and written from Arrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from components.settings import Settings
from components.sources import DataError, DatasetSpec, Located, Source, locate

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from components.data import Schema


@dataclass
class Ingested:
    table: pa.Table  # the kept columns, normalised (Arrow: the task holds the data once, compactly)
    schema: Schema
    fingerprint: str
    files: tuple[str, ...]

    @property
    def frame(self) -> pd.DataFrame:
        """The table as a frame (a copy, made when asked: the ingest task itself never makes one)."""
        return self.table.to_pandas()


def fingerprint(spec: DatasetSpec, settings: Settings) -> tuple[str, Located]:
    """A digest of the data behind ``spec.source`` and its added parts (from metadata: ETags in a store,
    cached content hashes locally) and of the spec, with the resolution it came from.

    Every cached step takes the digest as an input, so changed data can never be served from cache;
    ingest reads exactly the resolved objects.
    """
    located = locate(spec, settings)
    return fingerprint_of(located, spec), located


def fingerprint_of(src: Source | Located, spec: DatasetSpec) -> str:
    """The fingerprint of an already resolved source (its content digest) and the spec."""
    import hashlib

    h = hashlib.sha256(src.fingerprint.encode())
    h.update(repr((spec.target, spec.task, spec.timestamp, spec.id_columns, spec.exclude)).encode())
    return h.hexdigest()[:16]


def ingest(spec: DatasetSpec, settings: Settings, located: Located | None = None) -> Ingested:
    """Read and normalise the dataset (the run's resolution ``located``, when given) and infer its schema."""
    from components.data import infer_schema, load_table

    columns, src = load_table(spec, settings, located)
    schema = infer_schema(columns, spec)
    keep = [*schema.feature_names, schema.target] + ([schema.timestamp] if schema.timestamp else [])
    return Ingested(columns.table.select(keep), schema, src.fingerprint, src.files)


PREVIEW_ROWS = 10_000


def preview(spec: DatasetSpec, located: Located, settings: Settings) -> tuple[Schema, str]:
    """The columns a run will use, shown and checked before it starts: the schema of a bounded sample of
    the first data file (``PREVIEW_ROWS`` rows), and that file's name.

    One sentence (DataError) on a file without rows or a column named in ``spec`` that it lacks. The
    result is kept per fingerprint beside the pipeline root, so an unchanged re-run reads no rows.
    """
    from components.data import REQUEST_ID, Schema, infer_schema, normalise, sample

    src = located.source
    first = src.files[0]
    cached = _preview_cache(settings, fingerprint_of(located, spec))
    try:
        return Schema.from_json(cached.read_text()), first
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not seen before (or a broken entry): read the sample
    head = sample(src.first(), settings, PREVIEW_ROWS)
    if head.empty:
        raise DataError(f"{first} has no rows")
    columns = [str(c).strip() for c in head.columns]
    if spec.target not in columns:
        raise DataError(f"target column {spec.target!r} is not in {first} (columns: {', '.join(columns[:20])})")
    # the request id comes with the added parts of production rows, not with the source
    added = {REQUEST_ID} if spec.additions else set()
    for col in (*spec.exclude, *spec.id_columns, *([spec.timestamp] if spec.timestamp else [])):
        if col not in columns and col not in added:
            raise DataError(f"column {col!r} is not in {first}")
    head = normalise(head, spec)
    head.attrs["left_out"] = sorted(added)  # the request id: in the added parts, not in the source's first file
    schema = infer_schema(head, spec)
    del head
    _write_atomic(cached, schema.to_json())
    return schema, first


def _preview_cache(settings: Settings, fingerprint: str) -> Path:
    from components.sources import hash_cache_dir

    return hash_cache_dir(settings).parent / "previews" / f"{fingerprint}.json"


def _write_atomic(path: Path, text: str) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
