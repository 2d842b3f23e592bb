"""Read one window of prediction logs in bounded memory.

The window is read file by file, batch by batch, with only the columns the pass needs and
only the date partitions the window touches. Over the full window the scan keeps what
must be exact (row counts per model version, null rates, means, ranges, category
frequencies and the binned histograms behind PSI); it keeps a uniform sample of at most
``sample_size`` rows (bottom-k of a random key per row, so every row has the same chance
whatever the file sizes) for the statistical tests and Evidently, and the labelled rows
(those whose request id has feedback), capped the same way. Memory is one batch plus two
samples, whatever the window's size.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from components.data import LABEL, MODEL_VERSION, PREDICTION, REQUEST_ID, TIME, Schema
from components.store import NotFound, Store
from services.monitoring.compaction import live_keys, open_parquet

log = logging.getLogger(__name__)

BATCH_ROWS = 131_072
PSI_BINS = 10
MAX_TRACKED_CATEGORIES = 200
EPS = 1e-4


@dataclass(frozen=True)
class Window:
    """Prediction times ``start <= _time < end`` (start None: everything logged so far)."""

    start: dt.datetime | None
    end: dt.datetime

    @staticmethod
    def stamp(t: dt.datetime | None) -> str:
        return "origin" if t is None else t.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")

    @property
    def key(self) -> str:
        return f"{self.stamp(self.start)}--{self.stamp(self.end)}"

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start.isoformat() if self.start else None, "end": self.end.isoformat(), "key": self.key}

    @classmethod
    def of(cls, d: dict[str, Any]) -> Window:
        """The window ``to_dict`` wrote."""
        return cls(dt.datetime.fromisoformat(d["start"]) if d.get("start") else None, dt.datetime.fromisoformat(d["end"]))


@dataclass
class Scan:
    """What one pass over the window found."""

    rows_in_window: int = 0
    rows: int = 0  # rows of the served version: the ones evaluated
    rows_by_version: dict[str, int] = field(default_factory=dict)
    files_read: int = 0
    keys_read: list[str] = field(default_factory=list)
    late_rows: int = 0  # rows before the window from files no earlier pass had read (late.py)
    files_skipped: list[dict[str, str]] = field(default_factory=list)
    labelled_rows: int = 0
    sample: pd.DataFrame = field(default_factory=pd.DataFrame)
    labelled: pd.DataFrame = field(default_factory=pd.DataFrame)
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)


def partition_keys(store: Store, prefix: str, window: Window) -> list[str]:
    """Parquet keys under ``prefix/date=YYYY-MM-DD/`` for the dates the window touches, compacted or not.

    Each record is in exactly one of them: a compacted hour's file, not the parts it covers
    (``compaction.live_keys``).
    """
    if window.start is None:
        last = window.end.date().isoformat()
        return [k for k in live_keys(store, prefix) if k.split("/date=")[1][:10] <= last]
    days = []
    day = window.start.astimezone(dt.UTC).date()
    while day <= window.end.astimezone(dt.UTC).date():
        days.append(day.isoformat())
        day += dt.timedelta(days=1)
    return live_keys(store, prefix, days)


def read_feedback(store: Store, model: str, since: dt.datetime | None, until: dt.datetime) -> tuple[pa.Table, list[dict[str, str]]]:
    """Labels that arrived since the window started (feedback comes after predictions).

    Returns one row per request id (the latest label wins) and the files that could not be read.
    """
    window = Window(since, until)
    tables, skipped = [], []
    for key in partition_keys(store, f"feedback/{model}", window):
        try:
            t = open_parquet(store, key).read(columns=[REQUEST_ID, TIME, LABEL])
        except NotFound:
            continue
        except Exception as exc:  # noqa: BLE001 - a corrupt file is reported, never fatal
            skipped.append({"key": key, "error": f"unreadable feedback file: {exc}"})
            continue
        tables.append(t.cast(pa.schema([(REQUEST_ID, pa.string()), (TIME, t.schema.field(TIME).type),
                                        (LABEL, t.schema.field(LABEL).type)])) if t.schema.field(REQUEST_ID).type != pa.string() else t)
    if not tables:
        return pa.table({REQUEST_ID: pa.array([], pa.string()), LABEL: pa.array([], pa.float64())}), skipped
    fb = pa.concat_tables(tables, promote_options="permissive").to_pandas()
    fb = fb.sort_values(TIME).drop_duplicates(REQUEST_ID, keep="last")
    return pa.Table.from_pandas(fb[[REQUEST_ID, LABEL]], preserve_index=False), skipped


class _Sampler:
    """Uniform sample without replacement of at most k rows from a stream (bottom-k keys)."""

    def __init__(self, k: int, rng: np.random.Generator) -> None:
        self.k, self.rng = k, rng
        self.keys: list[np.ndarray] = []
        self.parts: list[pa.Table] = []
        self.pooled = 0
        self.cut = np.inf

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        u = self.rng.random(table.num_rows)
        keep = np.flatnonzero(u < self.cut)
        if len(keep) == 0:
            return
        self.keys.append(u[keep])
        self.parts.append(table.take(pa.array(keep)))
        self.pooled += len(keep)
        if self.pooled > 2 * self.k:
            self._prune()

    def _prune(self) -> None:
        keys = np.concatenate(self.keys)
        table = pa.concat_tables(self.parts, promote_options="permissive")
        if len(keys) > self.k:
            idx = np.argpartition(keys, self.k - 1)[: self.k]
            keys, table = keys[idx], table.take(pa.array(idx))
            self.cut = float(keys.max())
        self.keys, self.parts, self.pooled = [keys], [table], len(keys)

    def frame(self) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame()
        self._prune()
        return self.parts[0].to_pandas()


def _histogram(v: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin, bin i = values with exactly i edges <= value (as searchsorted side="right").

    One vectorised comparison per edge: with the ten PSI bins this is several times faster
    than a binary search per value, and the scan spends most of its time here.
    """
    at_least = np.array([len(v), *(np.count_nonzero(v >= e) for e in edges), 0], dtype="int64")
    return at_least[:-1] - at_least[1:]


class _NumericStats:
    def __init__(self, reference: pd.Series) -> None:
        ref = reference.dropna().to_numpy(dtype="float64")
        self.edges = np.unique(np.quantile(ref, np.linspace(0, 1, PSI_BINS + 1)[1:-1])) if len(ref) else np.array([])
        self.ref_hist = np.bincount(np.searchsorted(self.edges, ref, side="right"), minlength=len(self.edges) + 1)
        self.ref_null = float(reference.isna().mean()) if len(reference) else 0.0
        self.ref_mean = float(ref.mean()) if len(ref) else None
        self.hist = np.zeros(len(self.edges) + 1, dtype="int64")
        self.n = self.nulls = 0
        self.sum = self.sumsq = 0.0
        self.lo, self.hi = np.inf, -np.inf

    def add(self, x: np.ndarray) -> None:
        """Fold a float64 vector (nulls as NaN) into the statistics."""
        nan = np.isnan(x)
        nulls = int(np.count_nonzero(nan))
        v = x[~nan] if nulls else x
        self.n += len(x)
        self.nulls += nulls
        if len(v):
            self.sum += float(v.sum())
            # einsum, not np.dot: a BLAS dot starts its thread pool, which costs 20x on a busy machine
            self.sumsq += float(np.einsum("i,i->", v, v))
            self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))
            self.hist += _histogram(v, self.edges)

    def result(self) -> dict[str, Any]:
        m = self.n - self.nulls
        mean = self.sum / m if m else None
        var = max(self.sumsq / m - mean * mean, 0.0) if m else None
        return {"rows": self.n, "null_rate": self.nulls / self.n if self.n else None, "reference_null_rate": self.ref_null,
                "mean": mean, "reference_mean": self.ref_mean, "std": float(np.sqrt(var)) if var is not None else None,
                "min": self.lo if m else None, "max": self.hi if m else None,
                "psi": psi(self.ref_hist, self.hist) if m else None}


def _value_counts(arr: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, pa.Array]:
    """Distinct values as text, and their counts. Counted in the column's own type, then only the
    distinct values are turned into text (casting a million integers to text first cost 0.3 s)."""
    try:
        vc = pc.value_counts(arr)
        values = vc.field("values")
        return (values if values.type == pa.string() else pc.cast(values, pa.string())), vc.field("counts")
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):  # a type counted only as text
        vc = pc.value_counts(pc.cast(arr, pa.string()))
        return vc.field("values"), vc.field("counts")


class _CategoricalStats:
    def __init__(self, reference: pd.Series, known: list[str] | None = None) -> None:
        self.ref_counts = reference.dropna().astype(str).value_counts()
        self.ref_null = float(reference.isna().mean()) if len(reference) else 0.0
        # what serving calls an unknown category: a value training never saw (the schema's
        # categories), else one the reference sample lacks
        self.known = {str(c) for c in known} if known else set(self.ref_counts.index)
        self.counts: dict[str, int] = {}
        self.n = self.nulls = self.unknown = 0

    def add(self, arr: pa.ChunkedArray | pa.Array) -> None:
        self.n += len(arr)
        self.nulls += arr.null_count
        values, counts = _value_counts(arr)
        for value, count in zip(values.to_pylist(), counts.to_pylist(), strict=True):
            if value is None:
                continue
            if value not in self.known:
                self.unknown += count
            if value in self.counts or len(self.counts) < MAX_TRACKED_CATEGORIES:
                self.counts[value] = self.counts.get(value, 0) + count
            else:
                self.counts["__other__"] = self.counts.get("__other__", 0) + count

    def result(self) -> dict[str, Any]:
        cats = list(self.ref_counts.index)
        ref = np.array([*self.ref_counts.to_numpy(), 0])
        cur = np.array([*(self.counts.get(c, 0) for c in cats), sum(v for k, v in self.counts.items() if k not in set(cats))])
        m = self.n - self.nulls
        top = sorted(self.counts.items(), key=lambda kv: -kv[1])[:10]
        unseen = sorted(k for k in self.counts if k not in set(cats) and k != "__other__")
        return {"rows": self.n, "null_rate": self.nulls / self.n if self.n else None, "reference_null_rate": self.ref_null,
                "top": {k: v / m for k, v in top} if m else {}, "unseen_categories": unseen[:20],
                "unknown_rate": self.unknown / m if m else None,
                "psi": psi(ref, cur) if m else None}


def psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Population stability index of two binned distributions (recorded, not decided on)."""
    r = np.asarray(reference_counts, dtype="float64")
    c = np.asarray(current_counts, dtype="float64")
    if r.sum() == 0 or c.sum() == 0:
        return 0.0
    r = np.clip(r / r.sum(), EPS, None)
    c = np.clip(c / c.sum(), EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))


def _time_mask(times: pa.ChunkedArray | pa.Array, window: Window) -> pa.Array:
    t = times
    if pa.types.is_string(t.type):
        t = pc.cast(pc.strptime(t, "%Y-%m-%dT%H:%M:%S", "us"), pa.timestamp("us"))
    if not pa.types.is_timestamp(t.type):
        raise ValueError(f"column {TIME} holds {t.type}, not timestamps")

    def scalar(x: dt.datetime) -> pa.Scalar:
        x = x.astimezone(dt.UTC)
        return pa.scalar(x if t.type.tz else x.replace(tzinfo=None), type=t.type)

    mask = pc.less(t, scalar(window.end))
    if window.start is not None:
        mask = pc.and_(mask, pc.greater_equal(t, scalar(window.start)))
    return pc.fill_null(mask, False)


def scan_window(
    store: Store,
    model: str,
    window: Window,
    schema: Schema,
    version: str,
    reference: pd.DataFrame,
    sample_size: int,
    feedback: pa.Table | None = None,
    seed: int = 0,
    batch_rows: int = BATCH_ROWS,
    late: set[str] | None = None,
) -> Scan:
    """One streaming pass over the window's prediction logs (see the module docstring).

    Files in ``late`` arrived after their rows' window was evaluated: they are read whole
    (every row before the window's end), and their rows before the window count as late.
    """
    late = late or set()
    everything_before = Window(None, window.end)
    features = [c.name for c in schema.features]
    kinds = {c.name: c.kind for c in schema.features}
    rng = np.random.default_rng(seed)
    sampler, labelled_sampler = _Sampler(sample_size, rng), _Sampler(sample_size, rng)
    stats: dict[str, Any] = {}
    for c in [*features, PREDICTION]:
        kind = kinds.get(c, "numeric" if schema.task == "regression" else "categorical")
        if kind == "datetime":
            continue
        ref = reference[c] if c in reference else pd.Series(dtype="float64")
        known = next((f.categories for f in schema.features if f.name == c), None)
        stats[c] = _NumericStats(ref) if kind == "numeric" else _CategoricalStats(ref, known)
    with_feedback = feedback is not None and feedback.num_rows > 0
    ids = feedback.column(REQUEST_ID) if with_feedback else None
    scan = Scan()
    needed = [TIME, MODEL_VERSION, *features, PREDICTION] + ([REQUEST_ID] if with_feedback else [])
    for key in sorted(set(partition_keys(store, f"predictions/{model}", window)) | late):
        try:
            pf = open_parquet(store, key)
            present = set(pf.schema_arrow.names)
            missing = [c for c in needed if c not in present]
            if TIME in missing or MODEL_VERSION in missing:
                raise ValueError(f"it has no {TIME} or {MODEL_VERSION} column")
            counts: dict[str, int] = {}
            # A truncated or corrupt file fails when its footer is read and a wrongly typed
            # column on its first batch, so in practice a bad file contributes no rows.
            for batch in pf.iter_batches(batch_size=batch_rows, columns=[c for c in needed if c in present]):
                tbl = pa.Table.from_batches([batch])
                if key in late:
                    tbl = tbl.filter(_time_mask(tbl.column(TIME), everything_before))
                    in_window = pc.sum(pc.cast(_time_mask(tbl.column(TIME), window), pa.int64())).as_py() or 0
                    scan.late_rows += tbl.num_rows - in_window
                else:
                    mask = _time_mask(tbl.column(TIME), window)
                    if not pc.all(mask).as_py():  # filtering copies every column: only when rows go
                        tbl = tbl.filter(mask)
                if tbl.num_rows == 0:
                    continue
                versions = pc.cast(tbl.column(MODEL_VERSION), pa.string())
                vc = pc.value_counts(versions)
                batch_versions = vc.field("values").to_pylist()
                for v, n in zip(batch_versions, vc.field("counts").to_pylist(), strict=True):
                    counts[str(v)] = counts.get(str(v), 0) + n
                served = tbl if batch_versions == [version] else tbl.filter(pc.fill_null(pc.equal(versions, version), False))
                if served.num_rows and missing:
                    raise ValueError(f"it has rows of the served version {version} but lacks column(s) {', '.join(missing)}")
                if served.num_rows:
                    _fold(served.drop_columns([TIME, MODEL_VERSION]), stats, sampler, labelled_sampler, scan, ids, feedback)
        except NotFound:
            continue  # deleted between list and read
        except Exception as exc:  # noqa: BLE001 - corrupt, partial or foreign files are reported and skipped
            scan.files_skipped.append({"key": key, "error": f"{type(exc).__name__}: {exc}"})
            log.warning("skipping %s: %s", key, exc)
            continue
        scan.files_read += 1
        scan.keys_read.append(key)
        for v, n in counts.items():
            scan.rows_by_version[v] = scan.rows_by_version.get(v, 0) + n
            scan.rows_in_window += n
    scan.rows = scan.rows_by_version.get(version, 0)
    scan.sample = sampler.frame()
    scan.labelled = labelled_sampler.frame()
    scan.columns = {c: s.result() for c, s in stats.items()}
    return scan


def _floats(arr: pa.ChunkedArray) -> np.ndarray:
    """A numeric column as float64 with nulls as NaN (zero-copy when it already is one)."""
    arr = pc.cast(arr, pa.float64())
    if arr.num_chunks == 1 and arr.null_count == 0:
        return arr.chunk(0).to_numpy(zero_copy_only=True)
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype="float64")


def _fold(tbl: pa.Table, stats: dict[str, Any], sampler: _Sampler, labelled: _Sampler, scan: Scan,
          ids: pa.ChunkedArray | None, feedback: pa.Table | None) -> None:
    """Fold rows of the served version into the exact statistics and the samples.

    Numeric columns are cast before anything is counted, so a wrongly typed column raises
    before this batch touches the statistics.
    """
    arrays = {c: _floats(tbl.column(c)) if isinstance(s, _NumericStats) else tbl.column(c) for c, s in stats.items()}
    for c, s in stats.items():
        s.add(arrays[c])
    sampler.add(tbl.drop_columns([REQUEST_ID]) if REQUEST_ID in tbl.column_names else tbl)
    if ids is not None and feedback is not None:
        rows = tbl.filter(pc.is_in(tbl.column(REQUEST_ID), value_set=ids))
        if rows.num_rows:
            rows = rows.join(feedback, REQUEST_ID, join_type="inner")
            scan.labelled_rows += rows.num_rows
            labelled.add(rows.drop_columns([REQUEST_ID]))
