"""`flywheel monitor` as the CronJob runs it: exit status and the log's last line.

Given a served version, drifted logs and a KFP API that does not answer, when the real
``flywheel`` entry point runs a pass in a subprocess, then it exits 3 (a retrain failed:
a Job retry cannot help) and its last line says so in one sentence; a second pass before
the retry time exits 3 again, says the retrain waits for its retry, and evaluates the same
window (no second window's report).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from components.net import free_port
from components.settings import Settings
from components.store import open_store
from services.monitoring.monitor import EXIT_RETRAIN_FAILED
from testkit.logs import make_frame, serve_version, write_logs

FLYWHEEL = Path(sys.executable).parent / "flywheel"  # the console script the monitor image runs


def _monitor(settings: Settings, kfp_host: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "AWS_"))}
    env.update(FLYWHEEL_STORE=settings.store, FLYWHEEL_MODEL=settings.model, FLYWHEEL_RUNNER="kfp",
               FLYWHEEL_KFP_HOST=kfp_host, FLYWHEEL_MONITOR_REPORTS="never", FLYWHEEL_COOLDOWN_MINUTES="0",
               FLYWHEEL_RETRY_BACKOFF_MINUTES="30", FLYWHEEL_EVIDENTLY_WORKSPACE=settings.evidently_workspace)
    return subprocess.run([str(FLYWHEEL), "monitor", "--data", "datasets/test/train.parquet", "--target", "y"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)


def test_a_retrain_that_cannot_start_fails_the_pass_with_its_own_exit_code_and_last_line(settings: Settings) -> None:
    store = open_store(settings.store, settings)
    served = serve_version(store, settings.model)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    write_logs(served, make_frame(3000, seed=51, shift=0.5), start, 55)
    kfp = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the KFP API is unreachable

    first = _monitor(settings, kfp)
    second = _monitor(settings, kfp)

    assert first.returncode == EXIT_RETRAIN_FAILED == 3, first.stdout
    last = first.stdout.strip().splitlines()[-1]
    assert last.startswith("error: retrain ") and f"KFP API at {kfp} is unreachable" in last, last
    assert "attempt 1 of 4" in last and "next attempt at" in last and last.count(". ") == 0, last

    assert second.returncode == EXIT_RETRAIN_FAILED, second.stdout
    last = second.stdout.strip().splitlines()[-1]
    assert last.startswith("error: retrain ") and "waits for its next attempt at" in last, last
    windows = {k.split("/")[2] for k in store.list(f"monitoring/{settings.model}/") if k.endswith("summary.json")}
    assert len(windows) == 1, windows  # the second pass re-evaluated the first one's window
    [summary] = [json.loads(store.read(k)) for k in store.list(f"monitoring/{settings.model}/") if k.endswith("summary.json")]
    assert summary["decision"]["outcome"] == "failed_waiting" and summary["exit_code"] == EXIT_RETRAIN_FAILED
