"""The embedded trigger runs the real training pipeline (kfp.local) and a new version appears.

Given a served version, its training data in the store and drifted, partly labelled logs,
when a monitoring pass decides to retrain with the LocalTrigger, then the real local
pipeline runs on the dataset plus the labelled production rows, a new version is
registered and the trigger record says so.

And as a new user meets it (issue 21): a trips CSV whose date-times are text, a first model
trained on it, records of another region served and logged by the serving log with every
label sent back; the retrain reads the CSV plus a part of those rows, and trains on both.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd

from components.data import REQUEST_ID, DatasetSpec
from components.registry import Registry
from components.runtime import spec_of
from components.settings import Settings
from components.store import open_store, read_parquet, write_parquet
from pipelines.local.runner import run_training
from pipelines.triggers import LocalTrigger
from services.monitoring.monitor import run_pass
from testkit.logs import NOW, Served, make_frame, write_logs
from testkit.production import log_served, retrain_request, trips


def test_local_trigger_trains_a_new_version_on_data_plus_feedback(mon_settings: Settings, served: Served) -> None:
    write_parquet(served.store, "datasets/test/train.parquet", make_frame(3000, seed=41))
    write_logs(served, make_frame(3000, seed=42, shift=0.5), NOW.replace(minute=0) - dt.timedelta(hours=1), 60,
               feedback_share=0.3)
    spec = DatasetSpec(source="datasets/test/train.parquet", target="y", task="classification", name="test")
    before = served.registry.versions()

    s = run_pass(mon_settings, served.store, LocalTrigger(mon_settings, spec, include_feedback=True), now=NOW)

    rec = json.loads(served.store.read(s.decision.record))
    assert rec["status"] == "succeeded", rec.get("error")
    after = served.registry.versions()
    assert len(after) == len(before) + 1 and rec["version"] == after[-1]
    part = f"datasets/test-feedback/{rec['run_name']}.parquet"
    assert rec["source"] == "datasets/test/train.parquet" and rec["additions"] == [part]
    assert 800 < len(read_parquet(served.store, part)) < 1000  # ~30% of 3000 labelled rows
    assert served.registry.manifest(rec["version"])["dataset"]["additions"] == [part]
    assert s.exit_code == 0 and s.decision.retrain is True


def test_a_csv_with_text_date_times_retrains_on_logged_predictions_and_feedback(settings: Settings,
                                                                               tmp_path: Path) -> None:
    store = open_store(settings.store, settings)
    base = trips(1500, seed=1)
    store.write("datasets/trips/trips.csv", base.to_csv(index=False).encode())
    first = run_training(DatasetSpec("datasets/trips/trips.csv", "fare", timestamp="pickup", name="test"), settings)
    reg = Registry(store, "test")
    v1 = first["version"]
    from components.model_runtime import load_version

    champion = load_version(reg, v1)
    served = trips(600, seed=2, start="2026-03-01", days=7, other_region=True)
    logged = log_served(store, "test", v1, champion.schema, served, tmp_path / "spill",
                        predict=lambda frame: champion.predict(frame).values)
    datasets_before = set(store.list("datasets/"))

    # what `flywheel monitor --include-feedback` builds without --data: the champion's recorded source
    trigger = LocalTrigger(settings, spec_of(reg.manifest(v1)["dataset"]), include_feedback=True,
                           reuses_champion_data=True)
    out = trigger.start(retrain_request("test", v1))

    assert out["status"] == "succeeded", out.get("error")
    v2 = out["version"]
    assert reg.versions() == [v1, v2]
    part = f"datasets/test-feedback/{retrain_request('test', v1).run_name}.parquet"
    assert set(store.list("datasets/")) - datasets_before == {part}  # no copy of the CSV
    assert reg.manifest(v2)["dataset"]["source"] == "datasets/trips/trips.csv"
    assert reg.manifest(v2)["dataset"]["additions"] == [part]
    assert sorted(read_parquet(store, part)[REQUEST_ID]) == sorted(logged[REQUEST_ID])
    # v2 trained on the CSV's rows and the production rows: the training split (80%) holds both ...
    assert json.loads(reg.read(v2, "metrics.json"))["cv"]["rows"] == round(0.8 * (len(base) + len(served)))
    # ... and ingest read the drop-off times of both as one date-time column (none lost as unparsable)
    dropoff = reg.schema(v2).column("dropoff")
    assert dropoff.kind == "datetime" and dropoff.null_rate == 0.0
    assert dropoff.max == pd.Timestamp(served["dropoff"].max()).timestamp()
