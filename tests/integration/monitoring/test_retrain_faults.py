"""A fault on a retrain's data path ends the trigger as failed, in one sentence, never as an exception.

Given a champion, logged predictions with feedback and one fault on the way to the retrain's
data (an earlier part that cannot be read, a schema that cannot be read, a store that refuses
the new part), when the local or the KFP trigger starts the retrain, then it answers
``failed`` with one sentence naming what broke, starts no run and registers nothing; and a
monitoring pass records that on the trigger record instead of raising.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from components.registry import Registry
from components.settings import Settings
from components.store import Store, open_store
from pipelines.triggers import KFPTrigger, LocalTrigger
from testkit.production import log_served, register_champion, retrain_request, trips
from tests.integration.kfp_api.fake_kfp import FakeKFP
from tests.integration.monitoring.test_retrain_data import BASE


@pytest.fixture
def champion(settings: Settings, tmp_path: Path):
    from components.data import DatasetSpec
    from components.ingest import ingest

    store = open_store(settings.store, settings)
    store.write(BASE, trips(600, seed=1).to_csv(index=False).encode())
    spec = DatasetSpec(BASE, "fare", timestamp="pickup", name="test")
    schema = ingest(spec, settings).schema
    version = register_champion(store, "test", schema, spec)
    log_served(store, "test", version, schema, trips(200, seed=2, start="2026-03-01"), tmp_path / "spill")
    return store, spec, version


def unreadable_part(store: Store, spec, version: str):
    store.write("datasets/test-feedback/earlier.parquet", b"PAR1 this is not a Parquet file")
    return replace(spec, additions=("datasets/test-feedback/earlier.parquet",)), "datasets/test-feedback/earlier.parquet"


def unreadable_schema(store: Store, spec, version: str):
    key = Registry(store, "test").key(version, "schema.json")
    store.write(key, b'{"target": "fare", "task": ')  # cut short
    return spec, key


def store_refuses_the_part(store: Store, spec, version: str):
    store.write("datasets/test-feedback", b"a file where the parts' folder must go")  # no write can go under it
    return spec, "datasets/test-feedback"


FAULTS = [unreadable_part, unreadable_schema, store_refuses_the_part]


def one_sentence(text: str) -> bool:
    return "\n" not in text and "Traceback" not in text and text.count(". ") == 0 and len(text) < 400


@pytest.mark.parametrize("fault", FAULTS)
def test_the_local_trigger_answers_failed_in_one_sentence(settings: Settings, champion, fault) -> None:
    store, spec, version = champion
    spec, culprit = fault(store, spec, version)
    versions = Registry(store, "test").versions()

    out = LocalTrigger(settings, spec, include_feedback=True).start(retrain_request("test", version))

    assert out["status"] == "failed" and culprit in out["error"] and one_sentence(out["error"]), out
    assert Registry(store, "test").versions() == versions  # nothing registered, no run started
    assert not store.list("runs/test/")


@pytest.mark.parametrize("fault", FAULTS)
def test_the_kfp_trigger_answers_failed_in_one_sentence_and_starts_no_run(settings: Settings, champion, fault,
                                                                         tmp_path: Path) -> None:
    store, spec, version = champion
    spec, culprit = fault(store, spec, version)
    package = tmp_path / "flywheel-training.yaml"
    package.write_bytes(b"# PIPELINE DEFINITION\npipelineInfo:\n  name: flywheel-training\n")
    with FakeKFP() as api:
        kfp_settings = settings.model_copy(update={"runner": "kfp", "kfp_host": api.url})
        out = KFPTrigger(kfp_settings, spec, package, include_feedback=True, token_path=None).start(
            retrain_request("test", version))
        assert not api.calls("POST", "/apis/v2beta1/runs")
    assert out["status"] == "failed" and culprit in out["error"] and one_sentence(out["error"]), out


def test_a_pass_records_the_failed_retrain_and_does_not_raise(mon_settings: Settings, served) -> None:
    """The monitor's own path: drift decided, the trigger's data step fails, the record says why."""
    import datetime as dt

    from components.data import DatasetSpec
    from components.store import write_parquet
    from services.monitoring.monitor import run_pass
    from testkit.logs import NOW, make_frame, write_logs

    write_parquet(served.store, "datasets/test/train.parquet", make_frame(2000, seed=41))
    write_logs(served, make_frame(3000, seed=42, shift=0.5), NOW.replace(minute=0) - dt.timedelta(hours=1), 60,
               feedback_share=0.3)
    served.store.write("datasets/test-feedback/earlier.parquet", b"not parquet")
    spec = DatasetSpec("datasets/test/train.parquet", "y", task="classification", name="test",
                       additions=("datasets/test-feedback/earlier.parquet",))

    s = run_pass(mon_settings, served.store, LocalTrigger(mon_settings, spec, include_feedback=True), now=NOW)

    rec = json.loads(served.store.read(s.decision.record))
    assert rec["status"] == "failed" and "datasets/test-feedback/earlier.parquet" in rec["error"]
    assert one_sentence(rec["error"]) and s.exit_code == 3  # a retrain that failed (services/monitoring/monitor.py)
    assert served.registry.versions() == [served.version]
