"""End to end: the closed loop at a small size, every outcome read from the store and the service."""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from components.registry import Registry
from components.settings import load_settings
from components.store import open_store
from pipelines.loop.run import LoopError, LoopSize, Period, check_store_writable, run_loop, serving_port, single_run

# the module's loop (two trainings, traffic, passes) is one fixture: its setup gets the whole budget
pytestmark = pytest.mark.timeout(1500)

SMALL = LoopSize(history_rows=500, rows_per_period=1000, periods=(Period("stable"), Period("drifted", covariate_shift=1.0)))


def loop_settings(root: Path, **extra):
    return load_settings(store=str(root / "store"), pipeline_root=str(root / "kfp"), spill_dir=str(root / "spill"),
                         evidently_workspace=str(root / "evidently"), model="demo", cooldown_minutes=0, min_rows=300,
                         serving_poll_seconds=1.0, cv_folds=2, **extra)


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    settings = loop_settings(root)
    lines: list[str] = []
    result = run_loop(settings, lines.append, size=SMALL)
    return root, settings, result, lines


def test_first_champion_then_drift_retrain_and_promotion(loop):
    _, settings, result, _ = loop
    reg = Registry(open_store(settings.store, settings), "demo")
    assert reg.versions() == ["v1", "v2"]
    assert reg.champion().version == "v2" and reg.champion().previous == "v1"
    decision = reg.decision("v2")
    assert decision["promoted"] and decision["champion_version"] == "v1"
    assert decision["challenger_score"] > decision["champion_score"]  # judged on the same drifted holdout


def test_monitoring_passes_decide_from_the_data(loop):
    _, settings, result, _ = loop
    store = open_store(settings.store, settings)
    summaries = [json.loads(store.read(k)) for k in store.list("monitoring/demo/") if k.endswith("summary.json")]
    by_version = sorted(summaries, key=lambda s: s["started_at"])
    stable, drifted = by_version
    assert stable["decision"]["retrain"] is False and stable["drift"]["detected"] is False
    assert drifted["decision"]["retrain"] is True and drifted["drift"]["detected"] is True
    assert drifted["decision"]["run"]["version"] == "v2" and drifted["decision"]["run"]["promoted"] is True
    triggers = store.list("triggers/demo/")
    assert len(triggers) == 1 and json.loads(store.read(triggers[0]))["status"] == "succeeded"
    for s in summaries:
        assert store.exists(s["outputs"]["report"])  # the Evidently HTML report


def test_the_retrain_read_the_logged_predictions_joined_with_their_feedback(loop):
    """`make run`'s retrain takes the production path: the champion's source plus a part built from the log."""
    _, settings, _, _ = loop
    store = open_store(settings.store, settings)
    reg = Registry(store, "demo")
    dataset = reg.manifest("v2")["dataset"]
    assert dataset["source"] == reg.manifest("v1")["dataset"]["source"] == "datasets/demo/history/"
    [part] = dataset["additions"]
    assert part.startswith("datasets/demo-feedback/") and set(store.list("datasets/")) == {
        *store.list("datasets/demo/history/"), part}  # no generator frame of production traffic
    rows = pd.read_parquet(io.BytesIO(store.read(part)))
    labelled = pd.concat(pd.read_parquet(io.BytesIO(store.read(k))) for k in store.list("feedback/demo/"))
    logged = pd.concat(pd.read_parquet(io.BytesIO(store.read(k))) for k in store.list("predictions/demo/"))
    # every record of the two periods was labelled before the pass: all of them, once, as logged
    assert len(rows) == 2 * SMALL.rows_per_period and rows["_request_id"].is_unique
    assert set(rows["_request_id"]) <= set(labelled["_request_id"]) & set(logged["_request_id"])
    served = logged.set_index("_request_id").loc[rows["_request_id"]]
    assert (rows["event_time"].to_numpy() == served["_time"].to_numpy()).all()  # the prediction time orders them
    assert (rows["tenure_months"].to_numpy() == served["tenure_months"].to_numpy()).all()


def test_the_service_swapped_without_dropping_a_request(loop):
    _, settings, result, _ = loop
    assert result.failed_requests == 0
    assert [(s["from"], s["to"]) for s in result.swaps] == [("v1", "v2")]
    assert result.swaps[0]["seconds_from_first_drifted_request"] is not None
    store = open_store(settings.store, settings)
    logs = pd.concat(pd.read_parquet(io.BytesIO(store.read(k))) for k in store.list("predictions/demo/"))
    assert len(logs) == result.served == result.logged  # every served record was logged
    assert logs["_request_id"].is_unique
    assert set(logs["_model_version"]) == {"v1", "v2"}
    feedback = store.list("feedback/demo/")
    assert feedback and result.feedback == 2 * SMALL.rows_per_period


def test_a_second_run_continues_from_the_store_with_keep(loop):
    root, settings, _, _ = loop
    lines: list[str] = []
    again = run_loop(settings, lines.append, fresh=False, size=LoopSize(rows_per_period=400, periods=(Period("stable"),)))
    assert any("continuing from the store: champion v2" in line for line in lines)
    assert again.failed_requests == 0 and again.logged == again.served
    reg = Registry(open_store(settings.store, settings), "demo")
    assert reg.versions()[:2] == ["v1", "v2"]
    # the stable period is new to v2 (trained on drifted data): the pass judges it against v2's reference
    assert again.passes[0]["status"] == "ok" and again.passes[0]["rows"] > 0


def test_port_in_use_is_one_sentence():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(LoopError, match=f"port {port} is already in use"):
            serving_port(port)


def test_two_runs_at_once_are_refused(tmp_path):
    settings = loop_settings(tmp_path)
    with single_run(settings), pytest.raises(LoopError, match="another `flywheel run` is already running here"), \
            single_run(settings):
        pass
    with single_run(settings):  # released afterwards
        pass


def test_store_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(LoopError, match="not-a-dir"):
        check_store_writable(loop_settings(tmp_path).model_copy(update={"store": str(blocker / "store")}))


def test_ctrl_c_stops_everything_and_the_next_run_works(loop):
    root, settings, _, _ = loop
    champion = Registry(open_store(settings.store, settings), "demo").champion().version
    env = {**os.environ, "FLYWHEEL_STORE": settings.store, "FLYWHEEL_PIPELINE_ROOT": settings.pipeline_root,
           "FLYWHEEL_SPILL_DIR": settings.spill_dir, "FLYWHEEL_EVIDENTLY_WORKSPACE": settings.evidently_workspace}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", "--keep"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:  # wait until traffic is flowing
        seen.append(line)
        if "records of production traffic" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest and "Traceback" not in rest
    # nothing it started is left: no process in its group survives
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    # the lock is free and the registry is intact
    with open(Path(settings.spill_dir).resolve().parent / "run.lock") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert Registry(open_store(settings.store, settings), "demo").champion().version == champion
