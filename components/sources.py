"""Where a dataset is: what the user says about it, its files, and their content fingerprint.

No pandas here: the fingerprint task, which looks at the data on every run, reads no rows
(components/data.py reads them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from components.settings import Settings
from components.store import open_store

Task = Literal["classification", "regression"]
SUFFIXES = (".csv", ".parquet", ".pq", ".csv.gz")


class DataError(ValueError):
    """The user's data is unusable; the message names the file or column."""


@dataclass(frozen=True)
class DatasetSpec:
    """What the user says about a dataset, and the rows a retrain added to it.

    ``additions``: Parquet parts in the store (labelled production rows, written by a
    retrain's data step) read after the source's files and with the source's column types
    (``components.data.conform``): the source itself is never copied or rewritten.
    """

    source: str
    target: str
    task: Task | None = None
    timestamp: str | None = None
    id_columns: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    name: str = "dataset"
    additions: tuple[str, ...] = ()


def _is_data_file(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


@dataclass(frozen=True)
class Source:
    """A resolved dataset location: the files and a fingerprint of their content."""

    files: tuple[str, ...]
    fingerprint: str
    store_uri: str | None  # None: local disk


@dataclass(frozen=True)
class Located:
    """A spec's files: the source's, then those of each part added to it, under one fingerprint."""

    source: Source
    additions: tuple[Source, ...] = ()

    @property
    def fingerprint(self) -> str:
        """The source's own fingerprint when nothing is added (cache keys of plain runs stay as they were)."""
        if not self.additions:
            return self.source.fingerprint
        h = hashlib.sha256(self.source.fingerprint.encode())
        for part in self.additions:
            h.update(part.fingerprint.encode())
        return h.hexdigest()[:16]

    @property
    def files(self) -> tuple[str, ...]:
        return self.source.files + tuple(f for part in self.additions for f in part.files)


def locate(spec: DatasetSpec, settings: Settings) -> Located:
    """Resolve the source and every added part (each a Parquet object in the store)."""
    parts = tuple(resolve(key, settings) for key in spec.additions)
    for key, part in zip(spec.additions, parts, strict=True):
        wrong = [f for f in part.files if not f.lower().endswith((".parquet", ".pq"))]
        if wrong:
            raise DataError(f"added part {key} holds {wrong[0]}, which is not a Parquet file")
    return Located(resolve(spec.source, settings), parts)


def resolve(source: str, settings: Settings) -> Source:
    """Find the data files behind ``source`` and fingerprint their content.

    Local files are hashed byte by byte; objects in a store by key, size and ETag, which
    S3 computes from the content, so changed data always changes the fingerprint.
    """
    h = hashlib.sha256()
    local = Path(source).expanduser()
    if "://" not in source and local.exists():
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file() and _is_data_file(p.name))
        if not files:
            raise DataError(f"{source} holds no CSV or Parquet files")
        for p in files:
            if not _is_data_file(p.name):
                raise DataError(f"{p} is not a CSV or Parquet file (expected {', '.join(SUFFIXES)})")
            h.update(p.name.encode())
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
        return Source(tuple(str(p.resolve()) for p in files), h.hexdigest()[:16], None)
    if source.startswith("s3://"):
        bucket_and_key = source[len("s3://"):]
        bucket, _, key = bucket_and_key.partition("/")
        store = open_store(f"s3://{bucket}", settings)
        prefix = key
    elif "://" in source and not source.startswith("file://"):
        raise DataError(f"data source {source!r}: use a local path, an s3:// URI or a key in the store")
    else:
        store = open_store(settings.store, settings)
        prefix = source.removeprefix("store:")
        if not prefix or prefix.startswith("/") or prefix.startswith("file://"):
            raise DataError(f"data file {source} does not exist")
    keys = [k for k in store.list(prefix) if _is_data_file(k)]
    if not keys:
        raise DataError(f"data source {source} does not exist or holds no CSV or Parquet files")
    for k in keys:
        v = store.read_versioned(k)
        h.update(k.encode())
        h.update(v.etag.encode())
        h.update(str(len(v.data)).encode())
    return Source(tuple(keys), h.hexdigest()[:16], store.uri)
