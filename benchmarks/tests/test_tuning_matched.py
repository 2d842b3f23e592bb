"""The tuning benchmark's sides are matched: FLAML gets Flywheel's measured seconds, one job and the
same holdout, and the warm and cold searches score on the same folds.

The bench runs as ``python -m benchmarks.tuning out.json wine`` (the code ``make bench`` runs, on the
smallest table) and this test reads the figures it wrote: benchmarks and tests do not import each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# its tier (tests/conftest.py gives the tests under tests/ theirs by folder)
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("tuning") / "tuning.json"
    subprocess.run([sys.executable, "-m", "benchmarks.tuning", str(out), "wine"], cwd=ROOT, check=True, timeout=1800,
                   capture_output=True, text=True, env={**os.environ, "BENCH_TUNING_SEEDS": "42,43"})
    return json.loads(out.read_text())["wine"]


def test_flaml_gets_flywheels_measured_seconds_one_job_and_the_same_metric(wine: dict) -> None:
    settings = wine["flaml"]["settings"]
    assert settings["time_budget"] == wine["1x"]["seconds_under_load"] > 0
    assert (settings["n_jobs"], settings["seed"], settings["task"]) == (1, 42, "classification")
    assert 0 <= wine["flaml"]["holdout"] <= 1 and wine["flaml"]["best"] in wine["flaml"]["estimators"]


def test_warm_and_cold_score_on_the_same_folds_and_a_bigger_budget_keeps_the_default_choice_within_its_noise(wine: dict) -> None:
    assert [r["seed"] for r in wine["warm"]["seeds"]] == [42, 43]
    for warm in wine["warm"]["seeds"]:
        assert warm["same_folds"] is True
        # the champion's best point first; when it is not a default point it comes on top of the budget
        assert warm["warm_first_origin"] in ("warm", "default")
        assert warm["cold_trials_to_best"] is not None
        assert warm["warm_trials"] == warm["cold_trials"] + (warm["warm_first_origin"] == "warm")
    runs = wine["warm"]["seeds"]
    assert wine["warm"]["same_folds"] is True
    assert wine["warm"]["met"] == sum(r["share_of_cold_trials"] is not None and r["share_of_cold_trials"] <= 0.5 for r in runs)
    # 4x scores the 1x defaults on the same folds; its chosen trial is 1x's unless a sampled one leads by more than its noise
    assert wine["4x"]["cv"] >= wine["1x"]["cv"] and wine["4x"]["trials"] > wine["1x"]["trials"]
