"""Predict: batch scoring of whole files with a version's model (the runtime: components/model_runtime.py).

Records are validated by ``components.validation`` (the same columnar validator the HTTP
service uses), so a record the service refuses is a row the batch job reports, for the
same reason; good rows are scored, bad rows are written to an errors file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from components.data import PREDICTION, DataError, Schema
from components.model_runtime import score_frame
from components.validation import Validator

BATCH_ROWS = 50_000
ROW = "_row"
ERROR_COLUMNS = [ROW, "field", "problem"]


@dataclass(frozen=True)
class BatchResult:
    """What a batch prediction run did."""

    version: str
    rows_read: int
    rows_scored: int
    rows_rejected: int
    output: str
    errors_output: str | None
    first_problems: list[str]

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def predict_batch(settings: Any, data: str, output: str, version: str | None = None,
                  chunk_rows: int = BATCH_ROWS) -> BatchResult:
    """Score a CSV/Parquet file or prefix (local path, s3:// URI or store key) in chunks.

    Every row is validated like a request to the service; bad rows are written to
    ``<output>.errors.csv`` (row number, field, problem), good rows are scored with the
    registered model (``version``, default the champion) and written to ``output``
    (``.parquet`` or ``.csv``; a path without a suffix becomes a folder of Parquet parts).
    Memory stays bounded by ``chunk_rows`` whatever the size of the input.
    """
    import tempfile

    from components.registry import Registry
    from components.store import open_store

    registry = Registry(open_store(settings.store, settings), settings.model)
    if version is None:
        champ = registry.champion()
        if champ is None:
            raise DataError(f"model {settings.model} has no champion; pass --version or promote one")
        version = champ.version
    schema = registry.schema(version)
    model = registry.load_model(version)
    classes = [c.item() if isinstance(c, np.generic) else c for c in getattr(model, "classes_", [])]
    validator = Validator(schema, max_records=max(chunk_rows, 1))
    read = scored = rejected = 0
    shown: list[str] = []
    with tempfile.TemporaryDirectory(prefix="flywheel-predict-") as tmp, \
            _Sink(output, settings, tmp) as sink, _Sink(_errors_path(output), settings, tmp, csv=True) as errors:
        for chunk in _chunks(data, settings, schema, chunk_rows, tmp):
            missing = [n for n in schema.feature_names if n not in chunk.columns]
            if missing:
                raise DataError(f"{data} lacks the feature column(s) {', '.join(missing)} of {settings.model} {version}")
            chunk.index = pd.RangeIndex(read, read + len(chunk))
            rows = validator.check_frame(_numbers_from_text(chunk, schema))
            problems = rows.problems
            if problems:
                errors.write(pd.DataFrame([(read + (p.record or 0), p.field, p.problem) for p in problems],
                                          columns=ERROR_COLUMNS))
                shown += [f"row {read + (p.record or 0)}, field {p.field!r}: {p.problem}"
                          for p in problems[: max(0, 20 - len(shown))]]
            good = chunk.iloc[rows.frame.index.to_numpy()] if len(rows) else chunk.iloc[:0]
            if len(good):
                values, proba = score_frame(model, rows.frame, schema.task)
                out = good.reset_index(drop=True)
                out.insert(0, ROW, good.index.to_numpy())
                out[PREDICTION] = values
                if proba is not None:
                    for j, c in enumerate(classes):
                        out[f"_proba_{c}"] = proba[:, j]
                sink.write(out)
            read += len(chunk)
            scored += len(good)
            rejected += len(chunk) - len(good)
    if read == 0:
        raise DataError(f"{data} holds no rows")
    return BatchResult(version, read, scored, rejected, output, _errors_path(output) if rejected else None, shown)


def _numbers_from_text(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """CSV chunks hold numbers as text when one value in the chunk is not a number: parse the
    others, keep the bad ones as text so validation names them."""
    out = frame
    for c in schema.features:
        col = frame[c.name]
        if c.kind == "numeric" and col.dtype == object:
            num = pd.to_numeric(col, errors="coerce")
            bad = num.isna() & col.notna()
            if out is frame:
                out = frame.copy()
            out[c.name] = num.astype(object).where(~bad, col)
    return out


def _errors_path(output: str) -> str:
    base = output.rstrip("/")
    for suffix in (".parquet", ".csv"):
        base = base.removesuffix(suffix)
    return f"{base}.errors.csv"


def _chunks(data: str, settings: Any, schema: Schema, chunk_rows: int, tmp: str) -> Any:
    """DataFrames of at most ``chunk_rows`` rows from every file behind ``data``, in order."""
    import pyarrow.parquet as pq

    text_cols = {c.name: str for c in schema.features if c.kind in ("categorical", "datetime")}
    for name, path in _files(data, settings, tmp):
        if name.lower().endswith((".parquet", ".pq")):
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
        else:
            with pd.read_csv(path, chunksize=chunk_rows, dtype=text_cols, low_memory=False,
                             compression="gzip" if name.endswith(".gz") else None) as reader:
                yield from reader


def _files(data: str, settings: Any, tmp: str) -> Any:
    """(name, local path) of each data file behind ``data`` (components/sources.py resolves, data.py fetches)."""
    from components.data import local_files
    from components.sources import resolve

    yield from local_files(resolve(data.removeprefix("file://"), settings, content=False), settings, tmp)


def _store_and_key(uri: str, settings: Any, open_store: Any) -> tuple[Any, str]:
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://"):].partition("/")
        return open_store(f"s3://{bucket}", settings), key
    return open_store(settings.store, settings), uri.removeprefix("store:")


class _Sink:
    """Writes chunks to a Parquet file, a CSV file or a folder of Parquet parts; local or in a store."""

    def __init__(self, target: str, settings: Any, tmp: str, csv: bool = False) -> None:
        from pathlib import Path

        self.target = target
        self.settings = settings
        self.remote = target.startswith(("s3://", "store:"))
        name = target.rstrip("/")
        self.format = "csv" if csv or name.endswith(".csv") else "parquet"
        self.folder = not name.endswith((".csv", ".parquet"))
        self.local = Path(tmp) / "output" / Path(name).name if self.remote else Path(name.removeprefix("file://")).expanduser()
        self._writer: Any = None
        self._parts = 0
        self._wrote = False

    def __enter__(self) -> _Sink:
        if self.folder:
            self.local.mkdir(parents=True, exist_ok=True)
        else:
            self.local.parent.mkdir(parents=True, exist_ok=True)
            self.local.unlink(missing_ok=True)
        return self

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.folder:
            frame.to_parquet(self.local / f"part-{self._parts:05d}.parquet", index=False)
            self._parts += 1
        elif self.format == "csv":
            frame.to_csv(self.local, mode="a", header=not self._wrote, index=False)
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.local, table.schema)
            self._writer.write_table(table.cast(self._writer.schema))
        self._wrote = True

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
        if exc[0] is not None or not self._wrote or not self.remote:
            return
        from components.store import open_store

        store, key = _store_and_key(self.target.rstrip("/"), self.settings, open_store)
        if self.folder:
            for p in sorted(self.local.glob("*.parquet")):
                store.upload_file(p, f"{key}/{p.name}")
        else:
            store.upload_file(self.local, key)
