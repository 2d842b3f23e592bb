"""The search through the whole pipeline on kfp.local: a user's space and budget, the leaderboard
on the version and in KFP's metrics, the study kept in the store, and a retrain's warm start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.data import DatasetSpec
from components.registry import Registry
from components.settings import load_settings
from components.store import open_store
from components.synthetic import churn
from pipelines.local.runner import run_training

REPO = Path(__file__).resolve().parents[1]
TRIALS = 6


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuning")
    space = root / "space.yaml"
    # no defaults: every trial is the sampler's, so the champion's best point is one a warm start must bring back
    space.write_text(yaml.safe_dump({"logistic": {"params": {"C": {"low": 0.001, "high": 100.0, "log": True},
                                                             "select": {"choices": [False, True]}}}}))
    settings = load_settings(store=str(root / "store"), pipeline_root=str(root / "kfp"), model="tuned", cv_folds=2,
                             trials=TRIALS, search_space=str(space))
    first_data, second_data = root / "first.csv", root / "second.csv"
    churn(1200, seed=11).to_csv(first_data, index=False)
    churn(1200, seed=12).to_csv(second_data, index=False)
    first = run_training(DatasetSpec(str(first_data), "churned"), settings)
    second = run_training(DatasetSpec(str(second_data), "churned"), settings)  # a retrain on other data
    return settings, first, second


def _trials(settings, version: str) -> list[dict]:
    return json.loads(Registry(open_store(settings.store, settings), "tuned").read(version, "trials.json"))


def test_the_budget_and_the_users_space_decide_the_search(tuned):
    settings, first, _ = tuned
    trials = _trials(settings, first["version"])
    assert len(trials) == TRIALS and {r["candidate"]["family"] for r in trials} == {"logistic"}
    assert all(r["origin"] == "sampler" and 0.001 <= r["candidate"]["params"]["C"] <= 100 for r in trials)
    store = open_store(settings.store, settings)
    studies = [k for k in store.list("studies/tuned/")]
    assert studies and json.loads(store.read(studies[0])) in (trials, _trials(settings, tuned[2]["version"]))


def test_the_version_card_metrics_and_models_show_carry_the_leaderboard(tuned):
    settings, first, _ = tuned
    reg = Registry(open_store(settings.store, settings), "tuned")
    version = first["version"]
    search = reg.metrics(version)["search"]
    best = max((r for r in _trials(settings, version) if r["state"] == "complete"), key=lambda r: r["score"])
    assert search["best"] == best["candidate"]["id"] and search["leaderboard"][0]["id"] == best["candidate"]["id"]
    assert sum(search["trials"].values()) == TRIALS
    card = reg.read(version, "card.md").decode()
    assert f"## Search (best trial: {best['candidate']['id']})" in card and f"| 1 | {best['candidate']['id']} | logistic |" in card
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "models", "show", version, "--model", "tuned",
                           "--store", settings.store], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "", "COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    assert f"Search of tuned {version}: best trial {best['candidate']['id']}" in proc.stdout
    assert f"{best['score']:.4f}" in proc.stdout


def test_kfp_metrics_artifacts_carry_the_best_trial_and_the_leaderboard(tuned):
    settings, first, _ = tuned
    best = max((r for r in _trials(settings, first["version"]) if r["state"] == "complete"), key=lambda r: r["score"])
    found = [json.loads(p.read_text()) for p in Path(settings.pipeline_root).rglob("search") if p.is_file()]
    assert any(m.get("best balanced_accuracy") == best["score"] and m.get(f"01 {best['candidate']['id']} (complete)") == best["score"]
               for m in found), found
    boards = [p.read_text() for p in Path(settings.pipeline_root).rglob("leaderboard") if p.is_file()]
    assert any(f"| 1 | {best['candidate']['id']} | logistic |" in b for b in boards)


def test_a_retrain_warm_starts_from_the_champions_best_trial_then_its_next_best(tuned):
    settings, first, second = tuned
    ranked = sorted((r for r in _trials(settings, first["version"]) if r["state"] == "complete"), key=lambda r: -r["score"])
    trials = _trials(settings, second["version"])
    # the study's first trial is the champion's best point, its next the champion's next-best trials proposed again
    assert trials[0]["origin"] == "warm" and trials[0]["candidate"]["params"] == ranked[0]["candidate"]["params"]
    assert [r["origin"] for r in trials].count("warm") == 1
    assert [r["candidate"]["params"] for r in trials[1:3]] == [r["candidate"]["params"] for r in ranked[1:3]]
    assert [r["origin"] for r in trials[1:3]] == ["warm-trial"] * 2
    assert trials[0]["state"] == "complete" and len(trials) == TRIALS + 1  # scored on the new data, on top of the budget
