"""The data a retrain reads: production rows keep their prediction time and are added once.

Given a dataset with a timestamp and labelled production logs in a real store, when two
retrains in a row build their data with ``--include-feedback`` and no ``--data`` (the second
reads what the first one wrote, as the champion's recorded source), then every production
row carries its logged prediction time and no request id appears twice.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from components.data import REQUEST_ID, TIME, DatasetSpec
from components.settings import Settings
from components.store import read_parquet, write_parquet
from pipelines.triggers import retrain_spec
from services.monitoring.scan import Window
from services.monitoring.trigger import RetrainRequest
from tests.monitoring.logs import NOW, Served, make_frame, write_logs


def request(served: Served, start: dt.datetime, end: dt.datetime) -> RetrainRequest:
    window = Window(start, end)
    return RetrainRequest("test", Window.stamp(start), served.version, window.to_dict(), "drift", "run")


def test_two_retrains_add_each_production_row_once_with_its_time(mon_settings: Settings, served: Served) -> None:
    base = make_frame(2000, seed=51)
    base["t"] = pd.date_range("2026-02-01", periods=len(base), freq="10min").strftime("%Y-%m-%d %H:%M:%S")
    write_parquet(served.store, "datasets/test/train.parquet", base)
    spec = DatasetSpec("datasets/test/train.parquet", "y", task="classification", timestamp="t", name="test")
    first_start = NOW - dt.timedelta(hours=2)
    logs1 = write_logs(served, make_frame(1000, seed=52), first_start, 60, feedback_share=0.5, seed=1)

    spec1 = retrain_spec(spec, mon_settings, request(served, first_start, first_start + dt.timedelta(hours=1)), True)
    one = read_parquet(served.store, spec1.source)
    prod1 = one[one[REQUEST_ID].notna()]
    assert REQUEST_ID in spec1.id_columns and spec1.timestamp == "t"
    assert 400 < len(prod1) < 600 and not prod1[REQUEST_ID].duplicated().any()
    logged = logs1.set_index(REQUEST_ID)[TIME]
    got = pd.to_datetime(prod1.set_index(REQUEST_ID)["t"], utc=True)
    assert got.notna().all() and (got == pd.to_datetime(logged.loc[got.index], utc=True)).all()
    assert pd.to_datetime(one["t"], utc=True).notna().all()  # the dataset's own times survive as instants

    second_start = NOW - dt.timedelta(hours=1)
    write_logs(served, make_frame(1000, seed=53), second_start, 60, feedback_share=0.5, seed=2)
    spec2 = retrain_spec(spec1, mon_settings, request(served, second_start, NOW.replace(minute=0)), True)
    two = read_parquet(served.store, spec2.source)
    prod2 = two[two[REQUEST_ID].notna()]
    assert not prod2[REQUEST_ID].duplicated().any()
    assert set(prod1[REQUEST_ID]) < set(prod2[REQUEST_ID])
    assert len(two) == len(base) + len(prod2) and 900 < len(prod2) < 1100
    assert spec2.id_columns.count(REQUEST_ID) == 1


def test_a_time_aware_split_puts_production_rows_by_their_time(mon_settings: Settings, served: Served) -> None:
    from components.data import normalise
    from components.split import split

    base = make_frame(3000, seed=54)
    base["t"] = pd.date_range("2026-03-09 00:00", periods=len(base), freq="20s")  # up to 2026-03-09 16:40
    write_parquet(served.store, "datasets/test/train.parquet", base)
    spec = DatasetSpec("datasets/test/train.parquet", "y", task="classification", timestamp="t", name="test")
    start = NOW - dt.timedelta(hours=1, minutes=30)
    write_logs(served, make_frame(2000, seed=55), start, 60, feedback_share=0.5)
    out = retrain_spec(spec, mon_settings, request(served, start, start + dt.timedelta(hours=1)), True)
    frame = normalise(read_parquet(served.store, out.source), out)
    schema = type("S", (), {"target": "y", "timestamp": "t", "task": "classification"})()
    train, holdout = split(frame, schema, 0.2, seed=0)
    # production rows are the newest: they fill the holdout first and the rest are trained on
    prod_in_train = train[REQUEST_ID].notna().sum()
    assert holdout[REQUEST_ID].notna().all() and prod_in_train == frame[REQUEST_ID].notna().sum() - len(holdout)
    assert np.all(train["t"].to_numpy() <= holdout["t"].min())
