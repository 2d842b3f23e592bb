"""The object store every stage works against: a local directory or S3/MinIO through boto3.

Keys are '/'-separated relative paths (``registry/demo/champion.json``). Every write is
atomic: a reader sees the old object or the whole new one, never a part. Two primitives
carry the concurrency rules of the registry and the monitor:

* ``create(key, data)`` writes only if the key does not exist yet (If-None-Match: * on S3,
  ``O_EXCL`` link locally) and says whether it won;
* ``replace(key, data, expected)`` writes only if the object is still the version the caller
  read (If-Match on the ETag on S3; a lock + compare locally), so concurrent promotions never
  lose an update.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from components.settings import Settings

if TYPE_CHECKING:  # pandas only where a frame is read or written: tasks that move no data start faster
    import pandas as pd
    import pyarrow as pa


class StoreError(RuntimeError):
    """The store cannot be reached or used; the message names the store and key."""


class NotFound(StoreError, KeyError):
    """The key does not exist in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class Changed(StoreError):
    """An object changed while a run read it (its ETag is not the one the run resolved)."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing says about an object, read from metadata only (LIST; no GET).

    ``etag``: the store's content tag (S3's ETag; "" in a local directory, whose files are
    fingerprinted by their cached content hash, components/sources.py). ``mtime_ns``: local files only.
    """

    key: str
    size: int
    etag: str = ""
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Versioned:
    """An object's bytes with the token a conditional replace must present."""

    data: bytes
    etag: str


class Store(Protocol):
    """What the stages need from object storage."""

    uri: str

    def read(self, key: str) -> bytes: ...
    def read_versioned(self, key: str) -> Versioned: ...
    def write(self, key: str, data: bytes) -> None: ...
    def create(self, key: str, data: bytes) -> bool: ...
    def replace(self, key: str, data: bytes, expected: str | None) -> bool: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def stat(self, prefix: str) -> list[ObjectInfo]: ...
    def open_read(self, key: str, etag: str = "") -> io.RawIOBase: ...
    def delete(self, key: str) -> None: ...
    def upload_file(self, path: str | Path, key: str) -> None: ...
    def move_file(self, path: str | Path, key: str) -> None: ...
    def download_file(self, key: str, path: str | Path, etag: str = "") -> None: ...
    def url(self, key: str) -> str: ...


def _etag(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _clean_key(key: str) -> str:
    key = key.strip("/")
    if not key or ".." in key.split("/"):
        raise StoreError(f"invalid store key {key!r}")
    return key


class LocalStore:
    """A directory on disk. Writes go to a temp file and are renamed into place."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = f"file://{self.root}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"store directory {self.root} cannot be created: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"store directory {self.root} is not writable")

    def _path(self, key: str) -> Path:
        return self.root / _clean_key(key)

    def url(self, key: str) -> str:
        return str(self._path(key))

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{key} not found in store {self.uri}") from None

    def read_versioned(self, key: str) -> Versioned:
        data = self.read(key)
        return Versioned(data, _etag(data))

    def _tmp(self, path: Path) -> tuple[int, str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        fd, tmp = self._tmp(path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        fd, tmp = self._tmp(path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.link(tmp, path)  # atomic, fails if the key exists
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @contextlib.contextmanager
    def _lock(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def replace(self, key: str, data: bytes, expected: str | None) -> bool:
        path = self._path(key)
        with self._lock(path):
            try:
                current = _etag(path.read_bytes())
            except FileNotFoundError:
                current = None
            if current != expected:
                return False
            self.write(key, data)
            return True

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix.strip("/") if prefix.strip("/") else self.root
        if base.is_file():
            return [prefix.strip("/")]
        if not base.is_dir():
            return []
        out = []
        for p in base.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                out.append(p.relative_to(self.root).as_posix())
        return sorted(out)

    def stat(self, prefix: str) -> list[ObjectInfo]:
        """Key, size and mtime of every object under ``prefix`` (``os.stat``: no file is read)."""
        out = []
        for key in self.list(prefix):
            st = self._path(key).stat()
            out.append(ObjectInfo(key, st.st_size, "", st.st_mtime_ns))
        return out

    def open_read(self, key: str, etag: str = "") -> io.RawIOBase:
        """The object as a seekable binary file (``etag`` is S3's check; a local file is checked by its caller)."""
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise NotFound(f"{key} not found in store {self.uri}") from None

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def upload_file(self, path: str | Path, key: str) -> None:
        dest = self._path(key)
        fd, tmp = self._tmp(dest)
        os.close(fd)
        try:
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def move_file(self, path: str | Path, key: str) -> None:
        """Take the file at ``path`` in under ``key``; it is gone afterwards, or untouched if this fails.

        A rename on the store's own filesystem (nothing copied), else a copy, then the unlink.
        """
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, dest)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        self.upload_file(path, key)
        Path(path).unlink()

    def download_file(self, key: str, path: str | Path, etag: str = "") -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"{key} not found in store {self.uri}")
        Path(path).write_bytes(src.read_bytes())


class S3Store:
    """A bucket (and optional prefix) on S3 or MinIO through boto3.

    S3 PUTs are atomic by nature; conditional writes use If-None-Match / If-Match, which
    AWS S3, MinIO and moto support. Large files go through boto3's multipart transfer.
    """

    def __init__(self, uri: str, settings: Settings) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        rest = uri[len("s3://"):]
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.uri = uri.rstrip("/")
        cfg = Config(
            retries={"mode": "standard", "max_attempts": settings.s3_max_attempts},
            connect_timeout=settings.s3_connect_timeout_seconds,
            read_timeout=settings.s3_read_timeout_seconds,
        )
        self.client = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region or "us-east-1", config=cfg
        )
        self.transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=16 << 20)

    def _key(self, key: str) -> str:
        key = _clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _call(self, what: str, key: str, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            expected = kwargs.get("IfMatch") or (kwargs.get("ExtraArgs") or {}).get("IfMatch")
            if expected and what in ("read", "download") and code in ("PreconditionFailed", "412"):
                raise Changed(f"object {self.url(key)} changed during the run (its ETag is no longer {expected}); "
                              "nothing was trained on it: run again to train on its new content") from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"{key} not found in store {self.uri}") from None
            if code == "NoSuchBucket":
                raise StoreError(f"bucket {self.bucket!r} of store {self.uri} does not exist") from None
            raise
        except BotoCoreError as exc:
            raise StoreError(f"store {self.uri} is unreachable while trying to {what} {key}: {exc}") from None

    def read(self, key: str) -> bytes:
        return self.read_versioned(key).data

    def read_versioned(self, key: str) -> Versioned:
        resp = self._call("read", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return Versioned(resp["Body"].read(), resp["ETag"])

    def write(self, key: str, data: bytes) -> None:
        self._call("write", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def _conditional_put(self, key: str, data: bytes, **cond: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call("write", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data, **cond)
            return True
        except NotFound:  # If-Match on a key that is gone
            return False
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code", "")
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise

    def create(self, key: str, data: bytes) -> bool:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, expected: str | None) -> bool:
        if expected is None:
            return self.create(key, data)
        return self._conditional_put(key, data, IfMatch=expected)

    def exists(self, key: str) -> bool:
        try:
            self._call("check", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
            return True
        except NotFound:
            return False

    def stat(self, prefix: str) -> list[ObjectInfo]:
        """Key, size and ETag of every object under ``prefix``, from LIST alone (no object is fetched)."""
        base = prefix.strip("/")
        full = self._key(base) if base else self.prefix
        strip = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("list", prefix, lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)))
        out = []
        for page in pages:
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(strip):] if obj["Key"].startswith(strip) else obj["Key"]
                if not base or rel == base or rel.startswith(base + "/"):
                    out.append(ObjectInfo(rel, int(obj["Size"]), obj["ETag"]))
        return sorted(out, key=lambda o: o.key)

    def list(self, prefix: str) -> list[str]:
        return [o.key for o in self.stat(prefix)]

    def open_read(self, key: str, etag: str = "") -> io.RawIOBase:
        """The object as a seekable binary file that fetches only the byte ranges read (ranged GETs,
        each with If-Match on ``etag`` when given: a changed object raises ``Changed``)."""
        head = self._call("read", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key),
                          **({"IfMatch": etag} if etag else {}))
        return _RangeReader(self, key, int(head["ContentLength"]), etag or head["ETag"])

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def upload_file(self, path: str | Path, key: str) -> None:
        self._call("upload", key, self.client.upload_file, str(path), self.bucket, self._key(key), Config=self.transfer)

    def move_file(self, path: str | Path, key: str) -> None:
        """Upload the file at ``path`` in one PUT (streamed from disk), then unlink it.

        One request, as ``write`` makes, not ``upload_file``'s transfer (parts above its threshold):
        the prediction log bounds its shutdown by one request's timeouts per part.
        """
        with open(path, "rb") as body:
            self._call("write", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=body)
        Path(path).unlink()

    def download_file(self, key: str, path: str | Path, etag: str = "") -> None:
        """Download to ``path``; with ``etag``, one streamed GET with If-Match (a changed object raises
        ``Changed``; boto3's transfer manager takes no If-Match), else boto3's (multipart) transfer."""
        if not etag:
            self._call("download", key, self.client.download_file, self.bucket, self._key(key), str(path),
                       Config=self.transfer)
            return
        resp = self._call("download", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key), IfMatch=etag)
        with open(path, "wb") as f:
            for chunk in resp["Body"].iter_chunks(1 << 22):
                f.write(chunk)


class _RangeReader(io.RawIOBase):
    """A read-only, seekable view of one S3 object that GETs only the ranges read (Parquet's footer
    and first row group for a sample, not the whole object)."""

    def __init__(self, store: S3Store, key: str, size: int, etag: str) -> None:
        self.store, self.key, self.size, self.etag, self.pos = store, key, size, etag, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = min(len(buffer), self.size - self.pos)
        if n <= 0:
            return 0
        s = self.store
        resp = s._call("read", self.key, s.client.get_object, Bucket=s.bucket, Key=s._key(self.key),
                       Range=f"bytes={self.pos}-{self.pos + n - 1}", IfMatch=self.etag)
        data = resp["Body"].read()
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def open_store(uri: str | None = None, settings: Settings | None = None) -> Store:
    """Open the store named by ``uri`` (default: the settings' store)."""
    settings = settings or Settings()
    uri = uri or settings.store
    if uri.startswith("s3://"):
        store = S3Store(uri, settings)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            store.client.head_bucket(Bucket=store.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StoreError(f"bucket {store.bucket!r} of store {uri} does not exist") from None
            raise StoreError(f"store {uri} refused access: {code or exc}") from None
        except BotoCoreError as exc:
            raise StoreError(f"store {uri} is unreachable (endpoint {settings.s3_endpoint_url or 'AWS'}): {exc}") from None
        return store
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        raise StoreError(f"store URI {uri!r} must be a directory, file://… or s3://bucket/prefix")
    return LocalStore(uri)


# --- tabular helpers shared by every stage -----------------------------------------------

def write_parquet(store: Store, key: str, frame: pd.DataFrame) -> None:
    """Write a frame as one Parquet object (atomic)."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    store.write(key, buf.getvalue())


def write_parquet_file(frame: pd.DataFrame | pa.Table, path: str | Path, rows: int = 262_144) -> None:
    """Write a frame (or an Arrow table, as it is) to a local Parquet file in row groups of ``rows``: a frame's
    Arrow copy held at any moment is one slice, not the table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(frame, pa.Table):
        pq.write_table(frame, path, row_group_size=rows)
        return
    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, max(len(frame), 1), rows):
            writer.write_table(pa.Table.from_pandas(frame.iloc[start:start + rows], schema=schema, preserve_index=False))


def read_parquet(store: Store, key: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Read one Parquet object."""
    import pandas as pd

    return pd.read_parquet(io.BytesIO(store.read(key)), columns=columns)
