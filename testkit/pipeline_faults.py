"""Pipeline and monitor faults for the faults table: real kfp.local, a real store, a real server.

Each fault is registered with the harness's ``@fault`` (testkit/faults.py), so `make
bench` prints it next to the serving faults, and the tests call the same functions:

* ``monitor_race``: two monitoring passes race on one drifted window; exactly one trigger.
* ``trigger_failure``: the trigger fails; the next pass after the backoff retries it, three
  passes racing on that retry start it once, never two in flight.
* ``champion_unusable``: the champion's model object is damaged, then replaced by one that
  cannot score the holdout; each training run fails at evaluate and the champion stays.
* ``rollout_failure``: a promoted version the server cannot load; the deploy step fails the
  run, the pointer returns to the previous champion, the server answers with it throughout.

The outcome says the run's state and the champion before and after (and, for the rollout,
which versions answered the requests). No prediction records are at stake here, so the
record columns stay empty.
"""

# no `from __future__ import annotations`: kfp reads the rollout pipeline's real parameter types

import datetime as dt
import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
from kfp import dsl, local

from components import kfp_components as c
from components import status as steps
from components.model_runtime import records_of
from components.registry import Registry
from components.settings import load_settings
from components.store import LocalStore, open_store
from testkit.faults import FaultResult, fault, metric, wait_for
from testkit.models import LOGISTIC, add_version, unscorable_model, wine_frame
from testkit.server import Server, serving_settings


class CountingTrigger:
    """A trigger that fails its first ``failures`` starts and counts how many starts overlap."""

    kind = "counting"
    source, reuses_champion_data, include_feedback = "data", False, False

    def __init__(self, failures: int = 0, hold: float = 0.3) -> None:
        self.failures, self.hold = failures, hold
        self.starts = self.running = self.max_running = 0
        self.lock = threading.Lock()

    def start(self, request: Any) -> dict[str, Any]:
        with self.lock:
            self.starts += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            fail = self.starts <= self.failures
        try:
            time.sleep(self.hold)
            if fail:
                raise RuntimeError("KFP API answered 503")
            return {"status": "succeeded", "run_id": request.run_name, "version": "v2", "registered": True}
        finally:
            with self.lock:
                self.running -= 1

    def poll(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"status": record["status"]}


def _drifted_world(work: Path) -> tuple[Any, Any]:
    from testkit.logs import NOW, make_frame, serve_version, write_logs

    settings = load_settings(store=str(work / "store"), model="test", window_minutes=60, min_rows=1000,
                             cooldown_minutes=0, sample_size=20_000, retry_backoff_minutes=10,
                             evidently_workspace=str(work / "evidently"), monitor_reports="never")
    served = serve_version(open_store(settings.store, settings), "test")
    write_logs(served, make_frame(3000, seed=61, shift=0.5), NOW.replace(minute=0) - dt.timedelta(hours=1), 60)
    return settings, served


@fault
def monitor_race(work: Path) -> FaultResult:
    """Two monitoring passes race on the same drifted window."""
    from services.monitoring.trigger import records
    from testkit.logs import NOW, race_passes

    settings, served = _drifted_world(work)
    trigger = CountingTrigger()
    results = race_passes(settings, served.store, trigger, NOW, 2)
    recs = records(served.store, "test")
    ok = trigger.starts == 1 and len(recs) == 1 and len(results) == 2
    return FaultResult("monitor_race", f"{len(results)} passes, {trigger.starts} trigger(s), {len(recs)} record(s); "
                       f"champion {served.version} -> {served.registry.champion().version}", ok,
                       details={"reasons": [r.decision.reason for r in results]})


@fault
def trigger_failure(work: Path) -> FaultResult:
    """The trigger fails once; a pass before the backoff waits, passes after it retry exactly once."""
    from services.monitoring.monitor import EXIT_RETRAIN_FAILED, run_pass
    from services.monitoring.trigger import records
    from testkit.logs import NOW, race_passes

    settings, served = _drifted_world(work)
    trigger = CountingTrigger(failures=1)
    first = run_pass(settings, served.store, trigger, now=NOW)
    [rec] = records(served.store, "test")
    early = run_pass(settings, served.store, trigger, now=NOW + dt.timedelta(minutes=1))
    due = dt.datetime.fromisoformat(rec["retry_at"]) + dt.timedelta(seconds=1)
    race_passes(settings, served.store, trigger, due, 3)
    [final] = records(served.store, "test")
    ok = (first.exit_code == EXIT_RETRAIN_FAILED and "next attempt at" in early.decision.reason and trigger.starts == 2
          and trigger.max_running == 1 and final["status"] == "succeeded" and final["attempts"] == 2)
    return FaultResult("trigger_failure", f"attempt 1 failed; retried once after {settings.retry_backoff_minutes:g} min "
                       f"({trigger.starts} starts, at most {trigger.max_running} in flight), record {final['status']}; "
                       f"champion {served.version} -> {served.registry.champion().version}", ok,
                       details={"record": final})


@fault
def champion_unusable(work: Path) -> FaultResult:
    """Train v1, then damage it (unloadable, then unscorable) and train on new data: each run fails, v1 stays."""
    from components.data import DatasetSpec
    from components.synthetic import churn
    from pipelines.local.runner import PipelineFailed, run_training

    settings = load_settings(store=str(work / "store"), pipeline_root=str(work / "kfp"), model="churn", cv_folds=2)
    churn(1500, seed=11).to_csv(work / "first.csv", index=False)
    churn(1500, seed=14).to_csv(work / "fresh.csv", index=False)
    run_training(DatasetSpec(str(work / "first.csv"), "churned", timestamp="event_time"), settings)
    reg = Registry(open_store(settings.store, settings), "churn")
    before, versions = reg.champion().version, reg.versions()
    key = reg.key(before, "model.joblib")
    outcomes = []
    for name, damaged in (("unloadable", b"not a pickle"), ("unscorable", unscorable_model())):
        reg.store.write(key, damaged)
        try:
            run_training(DatasetSpec(str(work / "fresh.csv"), "churned", timestamp="event_time"), settings)
            outcomes.append((name, "SUCCEEDED", ""))
        except PipelineFailed as exc:
            outcomes.append((name, "FAILED", str(exc)))
    after = reg.champion().version
    ok = (after == before and reg.versions() == versions
          and all(state == "FAILED" and "step evaluate failed: champion" in why for _, state, why in outcomes))
    said = "; ".join(f"{name}: run {state}" + (" at evaluate" if "step evaluate" in why else "") for name, state, why in outcomes)
    return FaultResult("champion_unusable", f"{said}; champion {before} -> {after}", ok,
                       details={"reasons": [why for *_, why in outcomes]})


@dsl.pipeline(name="rollout")
def rollout_pipeline(version: str, store: str, model: str, run: str):
    """The deploy step as the training pipeline runs it: inside the exit handler that records the run."""
    recorder = c.record_run(store=store, model=model, run=run).set_caching_options(False)
    with dsl.ExitHandler(recorder, name="run"):
        c.deploy(version=version, store=store, model=model, run=run).set_caching_options(False)


@fault
def rollout_failure(work: Path) -> FaultResult:
    """A promoted v2 the server cannot load: the deploy step (kfp.local) fails the run, v1 keeps answering."""
    store_root = work / "store"
    registry = Registry(LocalStore(store_root), "wine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(registry, wine_frame(), "target", LOGISTIC)  # v1, the champion
        add_version(registry, wine_frame(), "target", LOGISTIC, promote=False, seed=1)  # v2
    registry.store.write(registry.key("v2", "model.joblib"), b"not a pickle")  # the fault
    settings = serving_settings(store_root, "wine", work)
    record = records_of(wine_frame().drop(columns=["target"]).head(1))[0]
    answered: list[str] = []
    stop = threading.Event()
    server = Server(settings, work / "server.log").start()
    try:
        def traffic() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    try:
                        r = client.post(f"{server.url}/predict", json={"records": [record]})
                        answered.append(r.json()[0]["model_version"] if r.status_code == 200 else f"HTTP {r.status_code}")
                    except httpx.HTTPError as exc:
                        answered.append(type(exc).__name__)
                    time.sleep(0.05)

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        before = registry.champion().version
        registry.promote("v2", "passed the gate")  # what the register step does before deploy runs
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "kfp"), raise_on_error=False)
        rollout_pipeline(version="v2", store=str(store_root), model="wine", run="rollout-1")
        # the server followed the pointer to v2 while the run took its seconds, and refused it;
        # then requests answered after the rollback show what it serves now
        refused = wait_for(lambda: metric(server.url, "flywheel_model_swaps_total", outcome="refused") >= 1, timeout=60)
        after_run = len(answered)
        wait_for(lambda: len(answered) >= after_run + 20, timeout=60, every=0.05)
        stop.set()
        sender.join(30)
    finally:
        stop.set()
        server.stop()
    status = json.loads(registry.store.read("runs/wine/rollout-1/status.json"))
    deploy = steps.read_all(registry.store, "wine", "rollout-1").get("deploy")
    after = registry.champion().version
    versions = sorted(set(answered))
    ok = (status["state"] == "FAILED" and deploy is not None and deploy.outcome == "failed" and after == before
          and versions == [before] and refused and len(answered) >= after_run + 20)
    return FaultResult("rollout_failure", f"run {status['state']} at {(status.get('error') or {}).get('step')}; "
                       f"champion {before} -> v2 -> {after}; {len(answered)} requests answered by "
                       f"{', '.join(versions)}", ok,
                       details={"status": status, "deploy": deploy and deploy.reason, "answers": len(answered),
                                "versions": versions, "champion_reason": registry.champion().reason})
