"""The embedded trigger runs the real training pipeline (kfp.local) and a new version appears.

Given a served version, its training data in the store and drifted, partly labelled logs,
when a monitoring pass decides to retrain with the LocalTrigger, then the real local
pipeline runs on the dataset plus the labelled production rows, a new version is
registered and the trigger record says so.
"""

from __future__ import annotations

import datetime as dt
import json

from components.data import DatasetSpec
from components.settings import Settings
from components.store import write_parquet
from pipelines.triggers import LocalTrigger
from services.monitoring.monitor import run_pass
from tests.monitoring.logs import NOW, Served, make_frame, write_logs


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
    assert rec["source"] == "datasets/test-retrain/20260310T110000Z.parquet"
    from components.store import read_parquet

    combined = read_parquet(served.store, rec["source"])
    assert 3000 + 800 < len(combined) < 3000 + 1000  # the dataset + ~30% of 3000 labelled rows
    assert s.exit_code == 0 and s.decision.retrain is True
