"""Where a dataset is: what the user says about it, its files, and their content fingerprint.

No pandas here, and no data rows: the fingerprint comes from metadata (a store's LIST: key,
size, ETag; a local file's content hash, cached per path, size and mtime). components/data.py
reads the rows, of exactly the objects resolved here.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from components.settings import Settings
from components.store import Changed, ObjectInfo, open_store

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
    """A resolved dataset location: its objects (key or path, size, ETag or content hash) and their fingerprint.

    Resolved once per run, from metadata (components/sources.py ``resolve``), and passed on: the
    readers read exactly these objects and check that each is still the one resolved.
    """

    objects: tuple[ObjectInfo, ...]
    fingerprint: str
    store_uri: str | None  # None: local disk

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(o.key for o in self.objects)

    def first(self) -> Source:
        """The source's first file alone (what the checks before a run look at)."""
        return Source(self.objects[:1], self.fingerprint, self.store_uri)

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [asdict(o) for o in self.objects], "fingerprint": self.fingerprint, "store_uri": self.store_uri}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Source:
        return cls(tuple(ObjectInfo(**o) for o in d["objects"]), d["fingerprint"], d["store_uri"])


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

    def to_json(self) -> str:
        """The resolution as the fingerprint step hands it to ingest (part of ingest's cache key: a local file's
        mtime is in it, so a touched file is read again, as ``make`` would; its content hash keeps the fingerprint)."""
        return json.dumps({"source": self.source.to_dict(), "additions": [a.to_dict() for a in self.additions]},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> Located:
        d = json.loads(text) if isinstance(text, str) else text
        return cls(Source.from_dict(d["source"]), tuple(Source.from_dict(a) for a in d["additions"]))


def locate(spec: DatasetSpec, settings: Settings) -> Located:
    """Resolve the source and every added part (each a Parquet object in the store)."""
    parts = tuple(resolve(key, settings) for key in spec.additions)
    for key, part in zip(spec.additions, parts, strict=True):
        wrong = [f for f in part.files if not f.lower().endswith((".parquet", ".pq"))]
        if wrong:
            raise DataError(f"added part {key} holds {wrong[0]}, which is not a Parquet file")
    return Located(resolve(spec.source, settings), parts)


def resolve(source: str, settings: Settings, content: bool = True) -> Source:
    """Find the data files behind ``source`` and fingerprint them from metadata, reading no data rows.

    Objects in a store by key, size and ETag (one LIST; S3 computes the ETag from the content, so
    changed data always changes the fingerprint). Local files (and a local store's objects) by a
    content hash cached per (path, size, mtime): an unchanged file is not read again.
    ``content=False`` (batch scoring: no cache to key): local files by size and mtime alone.
    """
    local = Path(source).expanduser()
    if "://" not in source and local.exists():
        paths = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file() and _is_data_file(p.name))
        if not paths:
            raise DataError(f"{source} holds no CSV or Parquet files")
        for p in paths:
            if not _is_data_file(p.name):
                raise DataError(f"{p} is not a CSV or Parquet file (expected {', '.join(SUFFIXES)})")
        objects = [_hashed(str(p.resolve()), p.resolve(), settings, content) for p in paths]
        return Source(tuple(objects), _digest(objects, name=lambda o: Path(o.key).name), None)
    if source.startswith("s3://"):
        bucket, _, prefix = source[len("s3://"):].partition("/")
        store = open_store(f"s3://{bucket}", settings)
    elif "://" in source and not source.startswith("file://"):
        raise DataError(f"data source {source!r}: use a local path, an s3:// URI or a key in the store")
    else:
        store = open_store(settings.store, settings)
        prefix = source.removeprefix("store:")
        if not prefix or prefix.startswith("/") or prefix.startswith("file://"):
            raise DataError(f"data file {source} does not exist")
    listed = [o for o in store.stat(prefix) if _is_data_file(o.key)]
    if not listed:
        raise DataError(f"data source {source} does not exist or holds no CSV or Parquet files")
    if store.uri.startswith("file://"):  # a local store: no ETag, the cached content hash
        listed = [_hashed(o.key, Path(store.url(o.key)), settings, content) for o in listed]
    return Source(tuple(listed), _digest(listed, name=lambda o: o.key), store.uri)


def _digest(objects: list[ObjectInfo], name: Callable[[ObjectInfo], str]) -> str:
    h = hashlib.sha256()
    for o in objects:
        h.update(name(o).encode())
        h.update(o.etag.encode())
        h.update(str(o.size).encode())
    return h.hexdigest()[:16]


def _hashed(key: str, path: Path, settings: Settings, content: bool = True) -> ObjectInfo:
    """``path``'s size, mtime and content hash, the hash from the cache while size and mtime are unchanged."""
    st = path.stat()
    if not content:
        return ObjectInfo(key, st.st_size, "", st.st_mtime_ns)
    cache = hash_cache_dir(settings) / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        held = json.loads(cache.read_text())
        if {k: held.get(k) for k in stamp} == stamp:
            return ObjectInfo(key, st.st_size, held["sha256"], st.st_mtime_ns)
    except (OSError, ValueError, KeyError):
        pass  # no entry, or a broken one: a cache miss
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):  # not written while hashed
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({**stamp, "sha256": digest}, f)
        os.replace(tmp, cache)
    return ObjectInfo(key, st.st_size, digest, st.st_mtime_ns)


def hash_cache_dir(settings: Settings) -> Path:
    """Where local files' content hashes are cached (beside the pipeline root: the embedded runner's own folder)."""
    if "://" in settings.pipeline_root:  # a cluster's root is in the store: a task's own temporary folder
        return Path(tempfile.gettempdir()) / "flywheel" / "source-hashes"
    return Path(settings.pipeline_root).expanduser().resolve().parent / "source-hashes"


def check_unchanged(obj: ObjectInfo, path: Path) -> None:
    """Raise ``Changed`` naming ``path`` when the local file is no longer the one resolved (size or mtime differ)."""
    st = path.stat()
    if obj.mtime_ns is not None and (st.st_size, st.st_mtime_ns) != (obj.size, obj.mtime_ns):
        raise Changed(f"file {path} changed during the run (its size or modification time is not the one resolved); "
                      "nothing was trained on it: run again to train on its new content")
