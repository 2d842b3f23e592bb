"""A rollout that fails fails its run, and the service keeps answering with the previous version.

Given a real `bentoml serve` following the champion (v1) and a promoted v2 whose model
object is damaged, when the pipeline's deploy step runs on kfp.local (inside the same exit
handler as the training pipeline), then the step and the run fail with the reason, the
champion pointer is back on v1, and the service answered every request with v1 throughout.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path

import httpx
from kfp import dsl, local

from components import kfp_components as c
from components import status as steps
from components.registry import Registry
from components.store import LocalStore
from tests.serving.conftest import serving_settings
from tests.serving.models import LOGISTIC, add_version, wine_frame


@dsl.pipeline(name="rollout")
def rollout_pipeline(version: str, store: str, model: str, run: str) -> None:
    """The deploy step as the training pipeline runs it: inside the exit handler that records the run."""
    recorder = c.record_run(store=store, model=model, run=run).set_caching_options(False)
    with dsl.ExitHandler(recorder, name="run"):
        c.deploy(version=version, store=store, model=model, run=run).set_caching_options(False)


def test_a_failed_rollout_fails_the_run_and_the_service_keeps_the_previous_version(tmp_path: Path, start_server) -> None:
    store_root = tmp_path / "store"
    registry = Registry(LocalStore(store_root), "wine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(registry, wine_frame(), "target", LOGISTIC)  # v1, the champion
        add_version(registry, wine_frame(), "target", LOGISTIC, promote=False, seed=1)  # v2
    registry.store.write(registry.key("v2", "model.joblib"), b"\x80\x04 damaged")  # the fault
    settings = serving_settings(store_root, "wine", tmp_path)
    server = start_server(settings)
    record = wine_frame().drop(columns=["target"]).iloc[0].to_dict()
    answered: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(f"{server.url}/predict", json={"records": [record]})
                answered.append(r.json()[0]["model_version"] if r.status_code == 200 else f"HTTP {r.status_code}")
                time.sleep(0.05)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        registry.promote("v2", "passed the gate")  # what the register step does before deploy runs
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
                   raise_on_error=False)
        rollout_pipeline(version="v2", store=str(store_root), model="wine", run="rollout-1")
        time.sleep(3 * settings.serving_poll_seconds)  # the server has had time to follow the pointer
    finally:
        stop.set()
        sender.join(30)

    status = json.loads(registry.store.read("runs/wine/rollout-1/status.json"))
    assert status["state"] == "FAILED"
    assert status["error"]["step"] == "deploy" and "version v2 cannot serve" in status["error"]["error"]
    deploy = steps.read_all(registry.store, "wine", "rollout-1")["deploy"]
    assert deploy.outcome == "failed" and deploy.error_type == "RolloutFailed"
    assert registry.champion().version == "v1" and registry.champion().reason == "rollout of v2 failed"
    assert answered and set(answered) == {"v1"}, f"the service answered {sorted(set(answered))}"
