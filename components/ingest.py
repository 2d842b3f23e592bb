"""Ingest: read the user's data, normalise types, fingerprint the content, infer the schema.

pandas comes with the reading (components.data), not with this module: the fingerprint task,
which runs every time, reads no rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from components.settings import Settings
from components.sources import DatasetSpec, Located, Source, locate, resolve

if TYPE_CHECKING:
    import pandas as pd

    from components.data import Schema


@dataclass
class Ingested:
    frame: pd.DataFrame
    schema: Schema
    fingerprint: str
    files: tuple[str, ...]


def fingerprint(spec: DatasetSpec, settings: Settings) -> str:
    """A digest of the data behind ``spec.source`` and its added parts (bytes locally, ETags in S3) and of the spec.

    Every cached step takes it as an input, so changed data can never be served from cache.
    """
    return fingerprint_of(locate(spec, settings), spec)


def fingerprint_of(src: Source | Located, spec: DatasetSpec) -> str:
    """The fingerprint of an already resolved source (its content digest) and the spec."""
    import hashlib

    h = hashlib.sha256(src.fingerprint.encode())
    h.update(repr((spec.target, spec.task, spec.timestamp, spec.id_columns, spec.exclude)).encode())
    return h.hexdigest()[:16]


def ingest(spec: DatasetSpec, settings: Settings) -> Ingested:
    """Read and normalise the dataset and infer its schema."""
    from components.data import infer_schema, load

    frame, src = load(spec, settings)
    schema = infer_schema(frame, spec)
    keep = [*schema.feature_names, schema.target] + ([schema.timestamp] if schema.timestamp else [])
    return Ingested(frame[keep], schema, src.fingerprint, src.files)


def preview(spec: DatasetSpec, settings: Settings) -> tuple[Schema, str]:
    """The schema of the first data file, and its name: the columns a run will use, shown before it starts."""
    from components.data import infer_schema, normalise, read_source

    src = resolve(spec.source, settings)
    head = read_source(Source(src.files[:1], src.fingerprint, src.store_uri), settings)
    return infer_schema(normalise(head, spec), spec), src.files[0]
