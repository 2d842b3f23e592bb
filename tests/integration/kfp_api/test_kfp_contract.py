"""Contract of the cluster trigger and the KFP client code with the KFP v2beta1 REST API.

A real HTTP server on loopback (fake_kfp.FakeKFP) stands in for the API; ``kfp.Client``
talks to it unmodified. Given the API up, down or failing, when the trigger or a monitoring
pass runs, then the exact requests, the idempotency and the records are asserted.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest

from components.data import DatasetSpec
from components.settings import Settings
from pipelines import kfp_client
from pipelines.triggers import KFPTrigger
from services.monitoring.trigger import RetrainRequest, TriggerError, claim, records, refresh
from tests.integration.kfp_api.fake_kfp import FakeKFP

PACKAGE = b"# PIPELINE DEFINITION\npipelineInfo:\n  name: flywheel-training\n"
REQUEST = RetrainRequest("test", "20260310T110000Z", "v1", {"start": "2026-03-10T11:00:00+00:00",
                         "end": "2026-03-10T12:00:00+00:00", "key": "w"}, "drift", "test-retrain-20260310t110000z")
SPEC = DatasetSpec(source="datasets/test/data.parquet", target="y", name="test")
ROOT = "s3://bucket/store/pipeline_root"


@pytest.fixture
def kfp_api():
    with FakeKFP() as api:
        yield api


@pytest.fixture
def kfp_settings(settings: Settings, kfp_api: FakeKFP) -> Settings:
    return settings.model_copy(update={"runner": "kfp", "kfp_host": kfp_api.url, "kfp_experiment": "flywheel-retrain",
                                       "kfp_pipeline": "flywheel-training"})


@pytest.fixture
def package(tmp_path: Path) -> Path:
    p = tmp_path / "flywheel-training.yaml"
    p.write_bytes(PACKAGE)
    return p


def api_calls(api: FakeKFP) -> list[tuple[str, str]]:
    return [(c.method, c.path) for c in api.requests if not c.path.endswith("/healthz")]


def test_first_retrain_uploads_the_package_and_starts_a_run(kfp_api: FakeKFP, kfp_settings: Settings, package: Path) -> None:
    trigger = KFPTrigger(kfp_settings, SPEC, package, token_path=None)

    out = trigger.start(REQUEST)

    assert kfp_api.requests[0].path == "/apis/v2beta1/healthz"
    pid = next(iter(kfp_api.pipelines))
    assert api_calls(kfp_api) == [
        ("GET", "/apis/v2beta1/experiments"),  # find by name
        ("POST", "/apis/v2beta1/experiments"),
        ("GET", "/apis/v2beta1/pipelines"),  # find by name
        ("POST", "/apis/v2beta1/pipelines/upload"),
        ("GET", f"/apis/v2beta1/pipelines/{pid}/versions"),
        ("POST", "/apis/v2beta1/pipelines/upload_version"),
        ("POST", "/apis/v2beta1/runs"),
    ]
    exp_q = json.loads(kfp_api.calls("GET", "/apis/v2beta1/experiments")[0].query["filter"])
    assert exp_q["predicates"][0]["stringValue"] == "flywheel-retrain"
    assert kfp_api.calls("POST", "/apis/v2beta1/experiments")[0].json["display_name"] == "flywheel-retrain"
    upload = kfp_api.calls("POST", "/apis/v2beta1/pipelines/upload")[0]
    assert upload.query["name"] == "flywheel-training" and upload.files["uploadfile"] == PACKAGE
    digest = kfp_client.package_digest(package)[:12]
    version = kfp_api.calls("POST", "/apis/v2beta1/pipelines/upload_version")[0]
    assert version.query == {"name": f"flywheel-training-{digest}", "pipelineid": pid}
    run = kfp_api.calls("POST", "/apis/v2beta1/runs")[0].json
    assert run["display_name"] == REQUEST.run_name
    assert run["experiment_id"] == next(iter(kfp_api.experiments))
    assert run["pipeline_version_reference"] == {"pipeline_id": pid, "pipeline_version_id": out["pipeline_version_id"]}
    params = run["runtime_config"]["parameters"]
    assert params["source"] == SPEC.source and params["target"] == "y" and params["model"] == "test"
    assert params["run"] == REQUEST.run_name and params["store"] == kfp_settings.store
    assert "additions" not in params  # nothing added: a package compiled before the parameter takes the run
    assert out["status"] == "running" and out["run_id"] in kfp_api.runs


def test_same_package_is_not_uploaded_twice(kfp_api: FakeKFP, kfp_settings: Settings, package: Path) -> None:
    trigger = KFPTrigger(kfp_settings, SPEC, package, token_path=None)
    first = trigger.start(REQUEST)
    kfp_api.requests.clear()

    second = trigger.start(REQUEST)

    assert [p for m, p in api_calls(kfp_api) if m == "POST"] == ["/apis/v2beta1/runs"]
    assert second["pipeline_version_id"] == first["pipeline_version_id"] and second["run_id"] != first["run_id"]
    assert len(kfp_api.versions) == 2  # the pipeline's initial version + the content-named one


def test_new_package_content_becomes_a_new_version(kfp_api: FakeKFP, kfp_settings: Settings, package: Path) -> None:
    KFPTrigger(kfp_settings, SPEC, package, token_path=None).start(REQUEST)
    package.write_bytes(PACKAGE + b"# changed\n")
    kfp_api.requests.clear()

    out = KFPTrigger(kfp_settings, SPEC, package, token_path=None).start(REQUEST)

    assert [p for m, p in api_calls(kfp_api) if m == "POST"] == ["/apis/v2beta1/pipelines/upload_version", "/apis/v2beta1/runs"]
    assert kfp_api.versions[out["pipeline_version_id"]]["display_name"].endswith(kfp_client.package_digest(package)[:12])


def test_service_account_token_is_sent_when_present(kfp_api: FakeKFP, kfp_settings: Settings, package: Path,
                                                    tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("sa-token-123\n")
    KFPTrigger(kfp_settings, SPEC, package, token_path=str(token)).start(REQUEST)
    assert all(c.headers.get("authorization") == "Bearer sa-token-123" for c in kfp_api.requests)


def test_api_down_is_one_clear_error_and_nothing_is_sent(kfp_api: FakeKFP, kfp_settings: Settings, package: Path) -> None:
    kfp_api.down()
    t0 = time.perf_counter()
    with pytest.raises(TriggerError, match=r"KFP API at http://127\.0\.0\.1:\d+ is unreachable"):
        KFPTrigger(kfp_settings, SPEC, package, token_path=None).start(REQUEST)
    assert time.perf_counter() - t0 < 10  # not kfp.Client's 5 x 5 s healthz retries


def test_api_error_on_run_creation_is_reported(kfp_api: FakeKFP, kfp_settings: Settings, package: Path) -> None:
    kfp_api.fail[("POST", "/apis/v2beta1/runs")] = 500
    with pytest.raises(TriggerError, match=r"refused to start run .*HTTP 500 injected failure"):
        KFPTrigger(kfp_settings, SPEC, package, token_path=None).start(REQUEST)
    assert kfp_api.runs == {}


def test_missing_package_says_how_to_build_it(kfp_settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(TriggerError, match="flywheel compile --output"):
        KFPTrigger(kfp_settings, SPEC, tmp_path / "nope.yaml", token_path=None).start(REQUEST)


def test_a_package_compiled_with_another_search_parallelism_is_refused(kfp_api: FakeKFP, kfp_settings: Settings,
                                                                       tmp_path: Path) -> None:
    from pipelines.compile import compile_pipeline

    package = compile_pipeline(tmp_path / "p.yaml", parallelism=2)
    with pytest.raises(TriggerError) as exc:
        KFPTrigger(kfp_settings.model_copy(update={"parallelism": 5}), SPEC, package, token_path=None).start(REQUEST)
    assert str(exc.value) == (f"compiled pipeline {package} runs the search with parallelism 2 but the parallelism setting "
                              "is 5: recompile it (`flywheel compile`) or set FLYWHEEL_PARALLELISM=2")
    assert not kfp_api.calls("POST")
    KFPTrigger(kfp_settings.model_copy(update={"parallelism": 2}), SPEC, package, token_path=None).start(REQUEST)
    assert kfp_api.calls("POST", "/apis/v2beta1/runs")


def test_in_flight_run_blocks_until_the_api_says_it_finished(kfp_api: FakeKFP, kfp_settings: Settings, package: Path) -> None:
    from components.store import open_store
    from services.monitoring.trigger import update

    store = open_store(kfp_settings.store, kfp_settings)
    trigger = KFPTrigger(kfp_settings, SPEC, package, token_path=None)
    now = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
    assert claim(store, REQUEST, trigger.kind, now)
    started = trigger.start(REQUEST)
    update(store, "test", REQUEST.key, started, now)
    kfp_api.set_run_state(started["run_id"], "RUNNING")

    later = now + dt.timedelta(minutes=10)
    [rec] = refresh(store, "test", trigger, later, dt.timedelta(minutes=5), 3).records
    assert rec.status == "running" and rec.in_flight(later)
    kfp_api.set_run_state(started["run_id"], "SUCCEEDED")
    later = now + dt.timedelta(minutes=20)
    [rec] = refresh(store, "test", trigger, later, dt.timedelta(minutes=5), 3).records
    assert rec.status == "succeeded" and not rec.in_flight(later)
    [rec] = records(store, "test")
    assert rec["status"] == "succeeded" and rec["kfp_state"] == "SUCCEEDED"
    assert kfp_api.calls("GET", f"/apis/v2beta1/runs/{started['run_id']}")


def test_recurring_run_is_created_once(kfp_api: FakeKFP, kfp_settings: Settings, package: Path) -> None:
    client = kfp_client.connect(kfp_settings, token_path=None)
    exp = kfp_client.ensure_experiment(client, "flywheel")
    ref = kfp_client.ensure_pipeline_version(client, package, "flywheel-training")
    first = kfp_client.create_recurring_run(client, exp, ref, "nightly", "0 0 2 * * *", {"model": "test"}, ROOT)
    second = kfp_client.create_recurring_run(client, exp, ref, "nightly", "0 0 2 * * *", {"model": "test"}, ROOT)
    assert first == second and len(kfp_api.calls("POST", "/apis/v2beta1/recurringruns")) == 1
    body = kfp_api.calls("POST", "/apis/v2beta1/recurringruns")[0].json
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *" and body["max_concurrency"] == "1" or body["max_concurrency"] == 1
    assert body["pipeline_version_reference"]["pipeline_version_id"] == ref.version_id


# --- through a whole monitoring pass -----------------------------------------------------------

def _drifted_store(settings: Settings):
    from components.store import open_store
    from testkit.logs import NOW, make_frame, serve_version, write_logs

    store = open_store(settings.store, settings)
    served = serve_version(store, settings.model)
    write_logs(served, make_frame(3000, seed=31, shift=0.5), NOW.replace(minute=0) - dt.timedelta(hours=1), 60)
    return store, NOW


def test_pass_records_the_run_id_and_races_trigger_once(kfp_api: FakeKFP, kfp_settings: Settings, package: Path) -> None:
    import threading

    from services.monitoring.monitor import run_pass

    settings = kfp_settings.model_copy(update={"window_minutes": 60, "cooldown_minutes": 0})
    store, now = _drifted_store(settings)
    trigger = KFPTrigger(settings, SPEC, package, token_path=None)
    barrier, results = threading.Barrier(2), []

    def one() -> None:
        barrier.wait()
        results.append(run_pass(settings, store, trigger, now=now))

    threads = [threading.Thread(target=one) for _ in range(2)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]

    assert len(kfp_api.calls("POST", "/apis/v2beta1/runs")) == 1
    [rec] = records(store, "test")
    assert rec["status"] == "running" and rec["run_id"] in kfp_api.runs and rec["trigger"] == "kfp"
    assert sorted(r.decision.retrain for r in results) == [False, True]


def test_pass_with_the_api_down_exits_with_the_retrain_failed_code(kfp_api: FakeKFP, kfp_settings: Settings,
                                                                  package: Path) -> None:
    from services.monitoring.decision import Outcome
    from services.monitoring.monitor import EXIT_RETRAIN_FAILED, run_pass

    settings = kfp_settings.model_copy(update={"window_minutes": 60})
    store, now = _drifted_store(settings)
    kfp_api.down()

    s = run_pass(settings, store, KFPTrigger(settings, SPEC, package, token_path=None), now=now)

    assert s.exit_code == EXIT_RETRAIN_FAILED and s.status == "ok" and s.decision.outcome is Outcome.FAILED
    assert s.decision.failure is not None and "unreachable" in s.decision.failure.error
    assert s.decision.retrain is False and "kfp trigger failed" in s.decision.reason
    [rec] = records(store, "test")
    assert rec["status"] == "failed" and "run_id" not in rec and "unreachable" in rec["error"]


def test_a_retrain_with_feedback_hands_the_run_the_source_and_its_parts(kfp_api: FakeKFP, kfp_settings: Settings,
                                                                       package: Path, tmp_path: Path) -> None:
    """The cluster's steps read the parts like the source: store keys in the ``additions`` parameter,
    which the compiled pipeline routes to the fingerprint and ingest steps."""
    import yaml

    from components.store import open_store, read_parquet
    from pipelines.compile import compile_pipeline
    from testkit.logs import NOW, make_frame, serve_version, write_logs

    store = open_store(kfp_settings.store, kfp_settings)
    served = serve_version(store, kfp_settings.model)  # the source is not even there: the step never reads it
    write_logs(served, make_frame(300, seed=2), NOW - dt.timedelta(minutes=30), 20, feedback_share=1.0)

    out = KFPTrigger(kfp_settings, SPEC, package, include_feedback=True, token_path=None).start(REQUEST)

    params = kfp_api.calls("POST", "/apis/v2beta1/runs")[0].json["runtime_config"]["parameters"]
    part = f"datasets/test-feedback/{REQUEST.run_name}.parquet"
    assert params["source"] == SPEC.source and params["additions"] == [part] == out["additions"]
    assert "_request_id" in params["id_columns"] and len(read_parquet(store, part)) == 300
    ir = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", "img:1").read_text()))
    assert ir["root"]["inputDefinitions"]["parameters"]["additions"]["parameterType"] == "LIST"
    tasks = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    for step in ("fingerprint", "ingest"):
        assert tasks[step]["inputs"]["parameters"]["additions"] == {"componentInputParameter": "pipelinechannel--additions"}
