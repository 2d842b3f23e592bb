"""The refit's memory budget through the whole pipeline on kfp.local: a family whose refit would not fit
is refused before the search (one sentence, on the leaderboard and the version card) and the run
registers a model from a family that streams; with no such family the run ends with one sentence
naming the budget. The search task reads a bounded sample of the training rows, counted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from components.data import DatasetSpec
from components.registry import Registry
from components.settings import load_settings
from components.store import open_store
from components.synthetic import churn
from pipelines.local.runner import PipelineFailed, run_training

REPO = Path(__file__).resolve().parents[2]
BUDGET_MB = 300  # below the interpreter's own share of any in-memory refit estimate: logistic never fits
REFUSED = re.compile(r"^model family logistic is refused before training: its refit on [\d,]+ rows would need about "
                     r"[\d,]+ MB, more than the refit_memory_mb budget of 300 MB \(raise the budget with the training "
                     r"task's memory limit, or train on fewer rows\)$")


def _spec(path: Path) -> DatasetSpec:
    return DatasetSpec(str(path), "churned", timestamp="event_time", id_columns=["customer_id"])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("budget-data") / "churn.parquet"
    churn(3000, seed=21).to_parquet(path, index=False)
    return path


def test_a_family_over_budget_is_refused_before_the_search_and_another_family_is_registered(tmp_path, data):
    settings = load_settings(store=str(tmp_path / "store"), pipeline_root=str(tmp_path / "kfp"), model="budget",
                             cv_folds=2, families="logistic,lightgbm", refit_memory_mb=BUDGET_MB, max_train_rows=1000)
    env = {"PATH": os.environ.get("PATH", ""), "FLYWHEEL_STORE": settings.store, "FLYWHEEL_PIPELINE_ROOT": settings.pipeline_root,
           "FLYWHEEL_MODEL": "budget", "FLYWHEEL_CV_FOLDS": "2", "FLYWHEEL_FAMILIES": "logistic,lightgbm",
           "FLYWHEEL_REFIT_MEMORY_MB": str(BUDGET_MB), "FLYWHEEL_MAX_TRAIN_ROWS": "1000", "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", "--data", str(data), "--target", "churned",
                           "--timestamp", "event_time", "--id-column", "customer_id"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    reg = Registry(open_store(settings.store, settings), "budget")
    version = reg.versions()[-1]
    trials = json.loads(reg.read(version, "trials.json"))
    logistic = [r for r in trials if r["candidate"]["family"] == "logistic"]
    assert [r["state"] for r in logistic] == ["refused"]  # one record for the family: none of its points was scored
    assert REFUSED.match(logistic[0]["error"]), logistic[0]["error"]
    assert {r["state"] for r in trials if r["candidate"]["family"] == "lightgbm"} == {"complete"}
    training = reg.manifest(version)["training"]
    assert training["refit"]["family"] == "lightgbm" and training["refit"]["mode"] == "external-memory"
    assert logistic[0]["error"] in reg.read(version, "card.md").decode()
    assert f"warning: {logistic[0]['error']}" in " ".join(proc.stderr.split())  # what `flywheel train` tells the user
    assert reg.metrics(version)["search"]["trials"]["refused"] == 1
    # the search tasks held the sample, not the 2,400 training rows (counted in their KFP metrics)
    counted = [json.loads(p.read_text()).get("search_rows") for p in Path(settings.pipeline_root).rglob("train/metrics")]
    assert counted and set(counted) == {1000}, counted


def test_a_run_whose_every_family_is_refused_fails_naming_the_budget(tmp_path, data):
    settings = load_settings(store=str(tmp_path / "store"), pipeline_root=str(tmp_path / "kfp"), model="budget",
                             cv_folds=2, families="logistic", refit_memory_mb=BUDGET_MB)
    with pytest.raises(PipelineFailed, match=r"^step refit failed: no model family fits the refit_memory_mb budget of "
                                             r"300 MB \(their refits would need: logistic about [\d,]+ MB\); raise the budget"):
        run_training(_spec(data), settings)
    assert Registry(open_store(settings.store, settings), "budget").versions() == []
