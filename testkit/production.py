"""Production rows as a new user's would be: a trips table whose date-times are text in the CSV,
records validated against the champion's schema and logged by the serving prediction log
(``services/serving/prediction_log.RecordLog``, the service's own writer), and their true
labels sent to the feedback log later.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from components.data import LABEL, MODEL_VERSION, PREDICTION, REQUEST_ID, TIME, DatasetSpec, Schema
from components.registry import Registry
from components.store import Store
from components.validation import Validator
from services.monitoring.trigger import RetrainRequest
from services.serving.prediction_log import RecordLog

ZONES = ["north", "south", "east", "west"]
TEXT = "%Y-%m-%d %H:%M:%S"  # how a CSV export writes date-times


def trips(n: int, seed: int, start: str = "2026-02-01", days: int = 28, other_region: bool = False) -> pd.DataFrame:
    """Taxi trips: pick-up and drop-off times as text, distance, passengers, zone; target ``fare``.

    ``other_region``: longer trips in other zones (the served region is not the trained one).
    """
    rng = np.random.default_rng(seed)
    pickup = pd.Timestamp(start) + pd.to_timedelta(np.sort(rng.uniform(0, days * 86400, n)), unit="s")
    distance = rng.gamma(2.0, 3.0 if other_region else 1.5, n).round(2)
    minutes = (4 + 2.5 * distance + rng.normal(0, 2, n)).clip(1)
    dropoff = pickup + pd.to_timedelta(minutes * 60, unit="s")
    zone = rng.choice(ZONES, n, p=[0.1, 0.2, 0.3, 0.4] if other_region else [0.4, 0.3, 0.2, 0.1])
    fare = 3 + 1.8 * distance + 0.3 * minutes + pd.Series(zone).map(dict(zip(ZONES, [0, 1, 2, 3]))).to_numpy()
    return pd.DataFrame({
        "pickup": pickup.strftime(TEXT), "dropoff": dropoff.round("s").strftime(TEXT), "distance": distance,
        "passengers": rng.integers(1, 5, n), "zone": zone, "fare": (fare + rng.normal(0, 1, n)).round(2),
    })


def log_served(store: Store, model: str, version: str, schema: Schema, frame: pd.DataFrame, spill_dir: Path,
               predict: Callable[[pd.DataFrame], np.ndarray] | None = None, label_share: float = 1.0,
               seed: int = 0) -> pd.DataFrame:
    """Serve ``frame``'s records as the service does and log them, then send the labels of a share.

    The records go as JSON-like dicts (date-times as the text the user has) through the
    champion's validator; the logged columns are those ``FlywheelServing._score`` appends.
    Returns the logged request ids and times, with ``labelled`` marking those that got a label.
    """
    features = frame.drop(columns=[schema.target])
    records = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in features.astype(object).to_dict("records")]
    checked = Validator(schema).validate_records(records)
    n = len(checked.frame)
    assert n == len(frame), checked.problems[:3]
    ids = [uuid.uuid4().hex for _ in range(n)]
    now = pd.Timestamp.now(tz="UTC")
    columns = {REQUEST_ID: ids, TIME: pd.DatetimeIndex([now]).repeat(n), MODEL_VERSION: [version] * n}
    if checked.passthrough is not None:
        columns.update({c: checked.passthrough[c].to_numpy() for c in checked.passthrough.columns})
    columns.update({c: checked.frame[c].to_numpy() for c in checked.frame.columns})
    columns[PREDICTION] = predict(checked.frame) if predict else np.zeros(n)
    predictions = RecordLog(store, model, "predictions", spill_dir)
    predictions.append(columns)
    predictions.flush()
    labelled = np.random.default_rng(seed).random(n) < label_share
    labels = frame[schema.target].to_numpy()[labelled]
    feedback = RecordLog(store, model, "feedback", spill_dir)
    feedback.append(pd.DataFrame({REQUEST_ID: np.array(ids)[labelled], TIME: pd.Timestamp.now(tz="UTC"), LABEL: labels}))
    feedback.flush()
    return pd.DataFrame({REQUEST_ID: ids, TIME: columns[TIME], "labelled": labelled})


def register_champion(store: Store, model: str, schema: Schema, spec: DatasetSpec) -> str:
    """A promoted version with the schema and the recorded dataset a trained one has (no model file:
    the retrain's data step reads neither)."""
    reg = Registry(store, model)
    version = reg.claim_version()
    reg.write_version(version, {"schema.json": schema.to_json().encode(), "metrics.json": json.dumps({}).encode()},
                      {"fingerprint": f"test-{version}", "dataset": {**asdict(spec), "fingerprint": "test"}})
    reg.promote(version, "test fixture")
    return version


def retrain_request(model: str, version: str, key: str = "20261205T100000Z") -> RetrainRequest:
    """A retrain decided now against ``version``: its window ends after every record logged so far."""
    end = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    return RetrainRequest(model, key, version, {"start": None, "end": end.isoformat(), "key": key}, "drift",
                          f"{model}-retrain-{key.lower()}")
