"""Labelled production data, and the parts a retrain adds to its dataset.

A retrain reads the champion's source plus the labelled production rows: feedback labels
joined to the features logged with them. Those rows are written as Parquet parts beside the
source, ``datasets/<model>-feedback/<run>.parquet``, one per retrain, and named in the
dataset spec (``DatasetSpec.additions``); ingest reads them after the source's files, in the
source's column types (``components.data.conform``). Nothing here reads a row of the source:
what the monitor holds follows the labelled rows, and the store grows by them only.

The parts are also the record of which production rows a dataset holds: a retrain adds
only the request ids that none of the parts it builds on holds (it reads their request-id
column, nothing else). A chain of retrains adds one part each; at ``MAX_PARTS`` the next
retrain folds them, with its own rows, into one part, so the list a pipeline run is handed
stays short whatever the chain's length.
"""

from __future__ import annotations

import datetime as dt
import io
import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.data import LABEL, REQUEST_ID, TIME, DataError, Schema
from components.status import sentence
from components.store import NotFound, Store, StoreError
from services.monitoring.compaction import open_parquet
from services.monitoring.scan import BATCH_ROWS, Window, partition_keys, read_feedback

log = logging.getLogger(__name__)

PARTS = "datasets/{model}-feedback/"
MAX_PARTS = 20
# Logged values in the champion's schema types: what the serving validation hands the model
_TYPES = {"numeric": pa.float64(), "boolean": pa.float64(), "categorical": pa.string(), "datetime": pa.timestamp("ns")}
_TIME = pa.timestamp("ns", tz="UTC")


def part_key(model: str, run_name: str) -> str:
    """Where a retrain's part of production rows goes: named after the run that trains on it."""
    return f"{PARTS.format(model=model)}{run_name}.parquet"


def labelled_rows(store: Store, model: str, schema: Schema, until: dt.datetime, since: dt.datetime | None = None,
                  known: pa.Array | None = None) -> pa.Table:
    """Logged features of every labelled prediction whose request id is not in ``known``.

    One row per request id: ``REQUEST_ID``, ``TIME`` (the prediction's), the features in the
    schema's types and the label under the schema's target name. Only prediction rows whose
    request id has a label are kept, one batch at a time, so memory follows the labelled
    rows, not the logs. A log file that cannot be read is left out with a warning, as a
    monitoring pass leaves it out.
    """
    typed = pa.schema([(REQUEST_ID, pa.string()), (TIME, _TIME), *((c.name, _TYPES[c.kind]) for c in schema.features)])
    feedback, _ = read_feedback(store, model, since, until + dt.timedelta(days=1))
    if known is not None and len(known):
        feedback = feedback.filter(pc.invert(pc.is_in(feedback.column(REQUEST_ID), value_set=known)))
    out = pa.schema([*typed, (schema.target, feedback.schema.field(LABEL).type)])
    if feedback.num_rows == 0:
        return out.empty_table()
    ids = feedback.column(REQUEST_ID)
    parts = []
    for key in partition_keys(store, f"predictions/{model}", Window(since, until)):
        try:
            pf = open_parquet(store, key)
            if any(c not in pf.schema_arrow.names for c in typed.names):
                continue  # logged by a version with other features: not this schema's training data
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=typed.names):
                tbl = pa.Table.from_batches([batch])
                hit = tbl.filter(pc.is_in(tbl.column(REQUEST_ID), value_set=ids))
                if hit.num_rows:
                    parts.append(hit.select(typed.names).cast(typed))
        except NotFound:
            continue
        except Exception as exc:  # noqa: BLE001 - a corrupt file is left out, never fatal
            log.warning("feedback join skips %s: %s", key, exc)
    if not parts:
        return out.empty_table()
    joined = pa.concat_tables(parts).join(feedback, REQUEST_ID, join_type="inner")
    first = joined.append_column("_row", pa.array(range(joined.num_rows))).group_by(REQUEST_ID, use_threads=False) \
        .aggregate([("_row", "min")]).column("_row_min")
    rows = joined.take(pc.sort_indices(first)).rename_columns([schema.target if c == LABEL else c for c in joined.column_names])
    return rows.select(out.names)


def added_ids(store: Store, parts: tuple[str, ...]) -> pa.Array:
    """The request ids the parts hold: which production rows a dataset has already (their id column only)."""
    ids = []
    for key in parts:
        try:
            ids.append(open_parquet(store, key).read(columns=[REQUEST_ID]).column(REQUEST_ID).combine_chunks().cast(pa.string()))
        except Exception as exc:  # noqa: BLE001 - missing, corrupt or foreign: the dataset cannot be known
            raise DataError(f"{key}, a part of the champion's data, cannot be read ({sentence(exc)})") from None
    return pa.concat_arrays(ids) if ids else pa.array([], pa.string())


def add_production_rows(store: Store, model: str, schema: Schema, timestamp: str | None, parts: tuple[str, ...],
                        until: dt.datetime, key: str) -> tuple[str, ...]:
    """Write the labelled production rows no part in ``parts`` holds as the part ``key``; the parts
    a retrain then reads (``parts`` unchanged when there is nothing new).

    The rows keep their prediction time as the dataset's ``timestamp`` (a time-aware split then
    orders them among the source's rows), or no time when the dataset has none.
    """
    rows = labelled_rows(store, model, schema, until, known=added_ids(store, parts))
    if rows.num_rows == 0:
        log.info("retrain data: no labelled production rows beyond the %d part(s) of the champion's data", len(parts))
        return parts
    rows = rows.rename_columns([timestamp if c == TIME else c for c in rows.column_names]) if timestamp \
        else rows.drop_columns([TIME])
    new = rows.num_rows
    if len(parts) >= MAX_PARTS:  # fold: read the parts (production rows only) into this one
        rows = pa.concat_tables([*(_aligned(store, k, rows.schema) for k in parts), rows])
        parts = ()
    buf = io.BytesIO()
    pq.write_table(rows, buf)
    try:
        store.write(key, buf.getvalue())
    except (OSError, StoreError) as exc:
        raise StoreError(f"the part {key} cannot be written ({sentence(exc)})") from None
    log.info("retrain data: %d new labelled production rows -> %s (%d rows, %d part(s) before it)",
             new, key, rows.num_rows, len(parts))
    return (*parts, key)


def _aligned(store: Store, key: str, schema: pa.Schema) -> pa.Table:
    """A part's rows in ``schema``'s columns (a column it lacks is missing in its rows)."""
    try:
        table = open_parquet(store, key).read()
        return pa.table({f.name: table.column(f.name).cast(f.type) if f.name in table.column_names
                         else pa.nulls(table.num_rows, f.type) for f in schema})
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{key}, a part of the champion's data, cannot be folded into a new part ({sentence(exc)})") from None

