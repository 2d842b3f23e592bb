"""Compaction of the record logs: the small parts of each closed hour folded into one file.

The serving workers write a part per worker and flush (``<time>-<uuid>.parquet``, about 18
records each at 10 requests/s), so a day of 20 workers is hundreds of thousands of objects.
After each monitoring pass the monitor folds the parts of every closed hour into one file
per hour (per Arrow schema, so one unless the served version changed in the hour):

    predictions/<model>/date=YYYY-MM-DD/<time>-<uuid>.parquet              parts, as written
    predictions/<model>/date=YYYY-MM-DD/hour=HH/<time>-<uuid>.parquet      the hour's compacted file(s)
    predictions/<model>/date=YYYY-MM-DD/hour=HH/manifest.json              which of them count, and what they cover

The manifest is the commit: readers (``live_keys``) read the files it names and skip the parts
it covers; a file in ``hour=HH/`` that it does not name is read by nobody. A pass writes the new
file (the hour's current file plus the new parts, rows copied, never transformed) under a fresh
key, then replaces the manifest conditionally on the version it read (If-Match on S3, a lock
locally). So a compaction is atomic (readers see the parts or the file, never both), safe
with two passes at once (one wins the replace; the other deletes its file and tries again
on the new manifest, where its parts are covered), idempotent (a part is covered once), and
a pass cut short anywhere leaves either the old manifest (its file is an orphan nobody reads)
or the new one (its covered parts are skipped): a re-run completes it. Covered parts and
retired files are deleted ``grace`` after the commit that covered them, so a reader that
listed before the commit still finds them; orphans once they are that old. The manifest
keeps the names it covers: a part re-sent after its deletion (a spill directory's lease
that ran out mid-upload) is skipped, not counted twice.

Why not a table format (Delta Lake, Iceberg): their writers commit each append to the table's
log, so every flush of every worker would be a commit racing the others on one log (on S3
with a lock service or conditional puts per commit), and a part the spill directory sends
again would be appended twice where it is now written under the same key. Here the writers
stay plain idempotent puts, and the one commit per closed hour is the only transaction.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from components.status import sentence
from components.store import LocalStore, NotFound, Store, StoreError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
KINDS = ("predictions", "feedback")
SETTLE_SECONDS = 600.0  # an hour is compacted this long after it ends: its last flushes and sends are in
ROW_GROUP_ROWS = 131_072  # rows per row group of a compacted file: the scan's batch
ATTEMPTS = 5  # conditional replaces of one manifest lost to other passes before a pass gives the hour up
# a part's name (services/serving/log_encoding.part_name): the UTC time of its oldest record, then a token
_NAME = re.compile(r"^(\d{8})T(\d{2})(\d{4})(\d{6})-[0-9a-f]+\.parquet$")


class CompactionError(RuntimeError):
    """A compaction stopped; the message names the partition and hour. Nothing is lost: a re-run completes it."""


@dataclass
class Compacted:
    """What a compaction pass did over one log."""

    log: str
    hours: int = 0  # hours whose manifest this pass committed
    parts: int = 0  # parts folded in
    rows: int = 0  # rows in the files it committed
    deleted: int = 0  # covered parts, retired and orphaned files removed
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Manifest:
    """An hour's commit: its current files and every part (name) and file they cover, with when."""

    files: list[str] = field(default_factory=list)
    commits: list[dict[str, Any]] = field(default_factory=list)  # {"at": unix time, "parts": [names], "retired": [keys]}
    rows: int = 0

    @property
    def covered(self) -> set[str]:
        return {name for c in self.commits for name in c["parts"]}

    @property
    def retired(self) -> set[str]:
        return {key for c in self.commits for key in c["retired"]}

    def encode(self) -> bytes:
        return json.dumps({"files": self.files, "rows": self.rows, "commits": self.commits}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        d = json.loads(data)
        return cls(list(d["files"]), list(d["commits"]), int(d.get("rows", 0)))


def open_parquet(store: Store, key: str) -> pq.ParquetFile:
    """A log file for reading: in place on a local store (no copy in memory), else its bytes."""
    if isinstance(store, LocalStore):
        return pq.ParquetFile(store.url(key))
    return pq.ParquetFile(io.BytesIO(store.read(key)))


def live_keys(store: Store, prefix: str, days: Iterable[str] | None = None) -> list[str]:
    """The Parquet keys a reader of the log ``prefix`` reads: each record once, compacted or not.

    ``days`` (YYYY-MM-DD) limits the listing to those date partitions; None lists them all.
    Raises ``StoreError`` naming a manifest that cannot be read (the hour cannot be resolved).
    """
    if days is None:
        listed = [k for k in store.list(f"{prefix}/") if "/date=" in k]
    else:
        listed = [k for day in days for k in store.list(f"{prefix}/date={day}/")]
    return resolve(store, listed)


def resolve(store: Store, listed: list[str]) -> list[str]:
    """Of the keys a listing returned, the Parquet keys to read (see the module docstring)."""
    covered: set[str] = set()
    current: set[str] = set()
    for key in listed:
        if key.endswith(f"/{MANIFEST}") and "/hour=" in key:
            base = key.rsplit("/hour=", 1)[0]
            manifest = _manifest(store, key)[0]
            covered |= {f"{base}/{name}" for name in manifest.covered}
            current |= set(manifest.files)
    return sorted(k for k in listed if k.endswith(".parquet") and k not in covered
                  and ("/hour=" not in k or k in current))


def _manifest(store: Store, key: str) -> tuple[Manifest, str | None]:
    try:
        found = store.read_versioned(key)
    except NotFound:
        return Manifest(), None
    try:
        return Manifest.decode(found.data), found.etag
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"the compaction manifest {key} cannot be read ({sentence(exc)}): "
                         "its hour of logs cannot be told apart from the parts it covers") from None


def _hour_of(name: str) -> tuple[str, float] | None:
    """The hour (HH) of a part or compacted file's name, and the time its name carries."""
    m = _NAME.match(name)
    if not m:
        return None
    t = dt.datetime.strptime(f"{m[1]}{m[2]}{m[3]}{m[4]}", "%Y%m%d%H%M%S%f").replace(tzinfo=dt.UTC)
    return m[2], t.timestamp()


def compact(store: Store, prefix: str, now: float, grace_seconds: float, *,
            settle_seconds: float = SETTLE_SECONDS,
            compactable: Callable[[str], bool] | None = None,
            before_commit: Callable[[list[str]], None] | None = None) -> Compacted:
    """Fold the parts of every closed hour of the log ``prefix`` (``predictions/<model>``) into its file.

    ``compactable(key)`` may hold a part back (the monitor's: parts no pass has read yet stay
    apart, so that late arrivals are still told apart); ``before_commit(keys)`` is told the
    new files before they are committed. An hour that fails is named in ``errors`` by one
    sentence and the others go on; nothing is lost, a re-run completes it.
    """
    result = Compacted(prefix)
    listed = store.list(f"{prefix}/")
    hours: dict[tuple[str, str], list[str]] = {}
    for key in listed:
        parts = key.split("/date=", 1)
        if len(parts) != 2:
            continue
        day, rest = parts[1][:10], parts[1][11:]
        if rest.startswith("hour="):
            hours.setdefault((day, rest[5:7]), [])
            continue
        hour = _hour_of(rest)
        if hour is not None and "/" not in rest:
            hours.setdefault((day, hour[0]), []).append(rest)
    for (day, hour), names in sorted(hours.items()):
        end = dt.datetime.fromisoformat(f"{day}T{hour}:00:00+00:00").timestamp() + 3600
        if end + settle_seconds > now:
            continue
        base = f"{prefix}/date={day}"
        try:
            _compact_hour(store, base, hour, names, listed, now, grace_seconds, compactable, before_commit, result)
        except Exception as exc:  # noqa: BLE001 - one hour's failure (the store, a file) is reported, the others go on
            why = (f"the compaction of {base} hour {hour} stopped ({type(exc).__name__}: {sentence(exc)}); "
                   "no record is lost or counted twice, and the next compaction completes it")
            log.error("%s", why)
            result.errors.append(why)
    return result


def _compact_hour(store: Store, base: str, hour: str, names: list[str], listed: list[str], now: float,
                  grace: float, compactable: Callable[[str], bool] | None,
                  before_commit: Callable[[list[str]], None] | None, result: Compacted) -> None:
    key = f"{base}/hour={hour}/{MANIFEST}"
    for _ in range(ATTEMPTS):
        manifest, etag = _manifest(store, key)
        covered = manifest.covered
        new = [n for n in sorted(names) if n not in covered and (compactable is None or compactable(f"{base}/{n}"))]
        if not new:
            break
        files, rows, folded = _write_hour(store, base, hour, manifest.files, new)
        if not folded:  # every new part was unreadable: they stay apart (the scan reports them)
            break
        if before_commit is not None:
            before_commit(files)
        committed = Manifest(files, [*manifest.commits, {"at": now, "parts": folded, "retired": manifest.files}], rows)
        if store.replace(key, committed.encode(), etag):
            result.hours += 1
            result.parts += len(folded)
            result.rows += rows
            manifest = committed
            break
        for f in files:  # another pass committed this hour first: ours is read by nobody
            store.delete(f)
    else:
        raise CompactionError(f"its manifest {key} changed under {ATTEMPTS} attempts (other passes compacting it)")
    result.deleted += _collect(store, base, hour, manifest, listed, now - grace)


def _write_hour(store: Store, base: str, hour: str, current: list[str], new: list[str]) -> tuple[list[str], int, list[str]]:
    """Write the hour's current files and its new parts as new compacted files, one per schema.

    Returns the keys written, their rows and the new parts they hold. A part that cannot be
    read is left out (it stays a part, read and reported by the scan); a current file that
    cannot be read stops the hour. Memory: a row group per schema, and one part.
    """
    with tempfile.TemporaryDirectory(prefix="flywheel-compact-") as tmp:
        out = _Writers(Path(tmp))
        for f in current:
            for batch in open_parquet(store, f).iter_batches(batch_size=ROW_GROUP_ROWS):
                out.add(pa.Table.from_batches([batch]))
        folded = []
        for name in new:
            try:
                table = open_parquet(store, f"{base}/{name}").read()  # whole: a part is in or out, never half
            except NotFound:
                continue
            except Exception as exc:  # noqa: BLE001 - a corrupt or foreign part stays a part, reported by the scan
                log.warning("compaction leaves %s/%s apart: %s", base, name, sentence(exc))
                continue
            out.add(table)
            folded.append(name)
        paths, rows = out.close()
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        keys = []
        try:
            for path in paths:
                keys.append(f"{base}/hour={hour}/{stamp}-{uuid.uuid4().hex[:12]}.parquet")
                store.move_file(path, keys[-1])
        except BaseException:
            for k in keys:  # not committed: nobody reads them; removed now, or as orphans later
                store.delete(k)
            raise
    return keys, rows, folded


class _Writers:
    """One Parquet writer per schema, fed tables and writing full row groups."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.open: dict[pa.Schema, tuple[pq.ParquetWriter, Path, list[pa.Table]]] = {}
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        schema = table.schema.remove_metadata()
        if schema not in self.open:
            path = self.root / f"{len(self.open)}.parquet"
            self.open[schema] = (pq.ParquetWriter(path, schema, compression="snappy"), path, [])
        writer, _, pending = self.open[schema]
        pending.append(table.replace_schema_metadata(None))
        self.rows += table.num_rows
        if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
            self._flush(writer, pending)

    @staticmethod
    def _flush(writer: pq.ParquetWriter, pending: list[pa.Table]) -> None:
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
            pending.clear()

    def close(self) -> tuple[list[Path], int]:
        for writer, _, pending in self.open.values():
            self._flush(writer, pending)
            writer.close()
        return [path for _, path, _ in self.open.values()], self.rows


def _collect(store: Store, base: str, hour: str, manifest: Manifest, listed: list[str], cutoff: float) -> int:
    """Delete what the hour's manifest covered before ``cutoff``, and files of its own nobody committed by then."""
    present = set(listed)
    old = set()
    for c in manifest.commits:
        if c["at"] <= cutoff:
            old |= {f"{base}/{name}" for name in c["parts"]} | set(c["retired"])
    named = set(manifest.files) | manifest.retired
    folder = f"{base}/hour={hour}/"
    for key in listed:
        if key.startswith(folder) and key.endswith(".parquet") and key not in named:
            made = _hour_of(key.rsplit("/", 1)[1])
            if made is not None and made[1] <= cutoff:  # an orphan: a pass that lost its race or was cut short
                old.add(key)
    gone = sorted(old & present)
    for key in gone:
        store.delete(key)
    return len(gone)
