"""Ingest: read the user's data, normalise types, fingerprint the content, infer the schema."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from components.data import DatasetSpec, Schema, Source, infer_schema, load, resolve
from components.settings import Settings


@dataclass
class Ingested:
    frame: pd.DataFrame
    schema: Schema
    fingerprint: str
    files: tuple[str, ...]


def fingerprint(spec: DatasetSpec, settings: Settings) -> str:
    """A digest of the data behind ``spec.source`` (bytes locally, ETags in S3) and of the spec.

    Every cached step takes it as an input, so changed data can never be served from cache.
    """
    return fingerprint_of(resolve(spec.source, settings), spec)


def fingerprint_of(src: Source, spec: DatasetSpec) -> str:
    """The fingerprint of an already resolved source (its content digest) and the spec."""
    import hashlib

    h = hashlib.sha256(src.fingerprint.encode())
    h.update(repr((spec.target, spec.task, spec.timestamp, spec.id_columns, spec.exclude)).encode())
    return h.hexdigest()[:16]


def ingest(spec: DatasetSpec, settings: Settings) -> Ingested:
    """Read and normalise the dataset and infer its schema."""
    frame, src = load(spec, settings)
    schema = infer_schema(frame, spec)
    keep = [*schema.feature_names, schema.target] + ([schema.timestamp] if schema.timestamp else [])
    return Ingested(frame[keep], schema, src.fingerprint, src.files)
