"""Test data for monitoring: a served model version and prediction logs in a real store.

The serving engineer's log writer is not a dependency: logs and feedback are written here
in the documented layout (``predictions/<model>/date=YYYY-MM-DD/<part>.parquet``).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
import uuid
from dataclasses import dataclass

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from components.data import LABEL, MODEL_VERSION, PREDICTION, REQUEST_ID, TIME, Column, Schema
from components.registry import Registry
from components.store import Store, write_parquet
from services.monitoring.quality import quality_metrics

NUMERIC = [f"x{i}" for i in range(5)]
FEATURES = [*NUMERIC, "color"]
COLORS = ["red", "green", "blue"]
NOW = dt.datetime(2026, 3, 10, 12, 30, tzinfo=dt.UTC)


def make_frame(n: int, seed: int, shift: float = 0.0, flip: bool = False) -> pd.DataFrame:
    """Features and a label; ``shift`` moves x0..x2 by that many SD, ``flip`` inverts the concept."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, len(NUMERIC))), columns=NUMERIC)
    X[NUMERIC[:3]] += shift
    X["color"] = rng.choice(COLORS, size=n, p=[0.5, 0.3, 0.2])
    logit = 2.0 * X["x0"] - 1.5 * X["x1"] + (X["color"] == "red") * 0.5
    y = (logit + rng.logistic(size=n) * 0.5 > 0).astype(int)
    X["y"] = 1 - y if flip else y
    return X


@dataclass
class Served:
    store: Store
    registry: Registry
    version: str
    model: object


def serve_version(store: Store, model_name: str, seed: int = 0) -> Served:
    """Fit, register and promote a small classifier the way the register stage does."""
    frame = make_frame(6000, seed)
    pre = ColumnTransformer([("num", StandardScaler(), NUMERIC), ("cat", OneHotEncoder(handle_unknown="ignore"), ["color"])])
    model = make_pipeline(pre, LogisticRegression(max_iter=500)).fit(frame[FEATURES], frame["y"])
    train, holdout = frame.iloc[:4000], frame.iloc[4000:]
    ref = train[FEATURES].reset_index(drop=True).copy()
    ref[PREDICTION] = model.predict(train[FEATURES])
    ref[LABEL] = train["y"].to_numpy()
    features = [Column(c, "numeric", "float64", 0.0, float(frame[c].min()), float(frame[c].max())) for c in NUMERIC]
    features.append(Column("color", "categorical", "object", 0.0, categories=COLORS))
    schema = Schema("y", "classification", features, classes=[0, 1])
    holdout_metrics = quality_metrics("classification", holdout["y"], pd.Series(model.predict(holdout[FEATURES])), [0, 1])
    metrics = {"task": "classification", "primary_metric": "balanced_accuracy", "holdout": holdout_metrics}
    reg = Registry(store, model_name)
    v = reg.claim_version()
    buf, ref_buf = io.BytesIO(), io.BytesIO()
    joblib.dump(model, buf)
    ref.to_parquet(ref_buf, index=False)
    reg.write_version(v, {"model.joblib": buf.getvalue(), "schema.json": schema.to_json().encode(),
                          "metrics.json": json.dumps(metrics).encode(), "reference.parquet": ref_buf.getvalue()},
                      {"fingerprint": f"test-{seed}"})
    reg.promote(v, "test fixture")
    return Served(store, reg, v, model)


def write_logs(served: Served, frame: pd.DataFrame, start: dt.datetime, minutes: float, part: str | None = None,
               version: str | None = None, feedback_share: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Log ``frame`` as predictions spread over ``minutes`` from ``start`` (one part per date), plus feedback."""
    rng = np.random.default_rng(seed)
    n = len(frame)
    logs = frame[FEATURES].copy()
    logs.insert(0, REQUEST_ID, [uuid.uuid4().hex for _ in range(n)])
    logs.insert(1, TIME, pd.to_datetime(start) + pd.to_timedelta(np.sort(rng.uniform(0, minutes * 60, n)), unit="s"))
    logs.insert(2, MODEL_VERSION, version or served.version)
    logs[PREDICTION] = served.model.predict(frame[FEATURES])
    model = served.registry.model
    part = part or uuid.uuid4().hex[:8]
    for day, rows in logs.groupby(logs[TIME].dt.strftime("%Y-%m-%d")):
        write_parquet(served.store, f"predictions/{model}/date={day}/{part}.parquet", rows.reset_index(drop=True))
    if feedback_share:
        pick = rng.random(n) < feedback_share
        fb = pd.DataFrame({REQUEST_ID: logs[REQUEST_ID][pick].to_numpy(),
                           TIME: (logs[TIME][pick] + pd.Timedelta(minutes=5)).to_numpy(),
                           LABEL: frame["y"][pick].to_numpy()})
        fb[TIME] = pd.to_datetime(fb[TIME], utc=True)
        for day, rows in fb.groupby(fb[TIME].dt.strftime("%Y-%m-%d")):
            write_parquet(served.store, f"feedback/{model}/date={day}/{part}.parquet", rows.reset_index(drop=True))
    return logs


def race_passes(settings, store: Store, trigger, now: dt.datetime, passes: int, join_seconds: float = 300) -> list:
    """Start ``passes`` monitoring passes on the same window at the same instant; their summaries."""
    from services.monitoring.monitor import run_pass

    barrier, results = threading.Barrier(passes), []

    def one() -> None:
        barrier.wait()
        results.append(run_pass(settings, store, trigger, now=now))

    threads = [threading.Thread(target=one) for _ in range(passes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(join_seconds)
    return results


def write_parts(served: Served, start: dt.datetime, hours: int, parts_per_hour: int, rows_per_part: int,
                feedback_share: float = 0.0, seed: int = 0) -> int:
    """Log predictions as the serving workers do: many small parts named as the log names them
    (``<time of the oldest record>-<token>.parquet``), from ``start`` for ``hours``; feedback parts
    for a share of them (the next hour's). Returns the prediction rows written."""
    from services.serving.log_encoding import part_name

    model, rng, total = served.registry.model, np.random.default_rng(seed), 0
    for h in range(hours):
        for p in range(parts_per_hour):
            t0 = pd.Timestamp(start) + pd.Timedelta(hours=h) + pd.Timedelta(seconds=(p + 0.5) * 3600 / (parts_per_hour + 1))
            frame = make_frame(rows_per_part, seed * 100_000 + h * 1000 + p)
            logs = frame[FEATURES].copy()
            logs.insert(0, REQUEST_ID, [uuid.uuid4().hex for _ in range(rows_per_part)])
            logs.insert(1, TIME, t0 + pd.to_timedelta(np.arange(rows_per_part) * 0.01, unit="s"))
            logs.insert(2, MODEL_VERSION, served.version)
            logs[PREDICTION] = served.model.predict(frame[FEATURES])
            day = t0.strftime("%Y-%m-%d")
            write_parquet(served.store, f"predictions/{model}/date={day}/{part_name(t0.timestamp(), 'parquet')}", logs)
            total += rows_per_part
            pick = rng.random(rows_per_part) < feedback_share
            if pick.any():
                t1 = t0 + pd.Timedelta(hours=1)
                fb = pd.DataFrame({REQUEST_ID: logs[REQUEST_ID][pick].to_numpy(), TIME: t1, LABEL: frame["y"][pick].to_numpy()})
                write_parquet(served.store, f"feedback/{model}/date={t1.strftime('%Y-%m-%d')}/"
                              f"{part_name(t1.timestamp(), 'parquet')}", fb)
    return total
