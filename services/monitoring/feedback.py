"""Labelled production data: feedback labels joined to the features that were logged with them.

The retrain triggers use it to train on the latest data: the dataset plus what production
saw and was labelled since. Only prediction rows whose request id has a label are kept, one
batch at a time, so memory follows the labelled rows, not the logs.
"""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from components.data import LABEL, REQUEST_ID, TIME, Schema
from components.store import NotFound, Store
from services.monitoring.scan import BATCH_ROWS, Window, _open, partition_keys, read_feedback

log = logging.getLogger(__name__)


def labelled_rows(store: Store, model: str, schema: Schema, until: dt.datetime, since: dt.datetime | None = None) -> pd.DataFrame:
    """Logged features of every labelled prediction, one row per request id, with the label under
    the schema's target name, the request id and the prediction time (``REQUEST_ID``, ``TIME``)."""
    out = [REQUEST_ID, TIME, *schema.feature_names, schema.target]
    feedback, _ = read_feedback(store, model, since, until + dt.timedelta(days=1))
    if feedback.num_rows == 0:
        return pd.DataFrame(columns=out)
    ids = feedback.column(REQUEST_ID)
    columns = [REQUEST_ID, TIME, *schema.feature_names]
    parts = []
    for key in partition_keys(store, f"predictions/{model}", Window(since, until)):
        try:
            pf = _open(store, key)
            if any(c not in pf.schema_arrow.names for c in columns):
                continue  # logged by a version with other features: not this schema's training data
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                tbl = pa.Table.from_batches([batch])
                hit = tbl.filter(pc.is_in(tbl.column(REQUEST_ID), value_set=ids))
                if hit.num_rows:
                    parts.append(hit)
        except NotFound:
            continue
        except Exception as exc:  # noqa: BLE001 - a corrupt file is left out, never fatal
            log.warning("feedback join skips %s: %s", key, exc)
    if not parts:
        return pd.DataFrame(columns=out)
    joined = pa.concat_tables(parts, promote_options="permissive").join(feedback, REQUEST_ID, join_type="inner")
    frame = joined.to_pandas().drop_duplicates(REQUEST_ID)
    return frame.rename(columns={LABEL: schema.target})[out].reset_index(drop=True)
