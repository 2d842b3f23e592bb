"""Real-data shapes through `flywheel train` (the pipeline on kfp.local), as a new user runs it.

Given tables like users have (an optional column mostly empty, a slice that makes a column
constant, True/False columns, an id), when they train from the command line with output
redirected, then training goes on with warnings and shows the columns it uses; a refusal
names every error, one line each; a missing rate that jumps against the champion is a break.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.registry import Registry
from components.settings import load_settings
from components.store import open_store
from components.synthetic import churn


def real_shaped(n: int, seed: int) -> pd.DataFrame:
    """Churn rows with a 77%-empty column, a constant slice column and a True/False column."""
    frame = churn(n, seed=seed).drop(columns=["event_time"])
    rng = np.random.default_rng(seed)
    frame["referral_bonus"] = np.where(rng.uniform(size=n) < 0.77, np.nan, rng.uniform(5, 50, n).round(1))
    frame["country"] = "NL"  # one slice of the business
    frame["newsletter"] = rng.uniform(size=n) < 0.3
    return frame


def flywheel(store: Path, root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLYWHEEL_STORE": str(store), "FLYWHEEL_PIPELINE_ROOT": str(root), "FLYWHEEL_CV_FOLDS": "2",
           "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env,
                          timeout=900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("real-data-with-a-rather-long-folder-name-so-paths-pass-eighty-columns")
    data = root / "orders_with_optional_columns_exported_from_the_shop_database.csv"
    real_shaped(600, seed=21).to_csv(data, index=False)
    proc = flywheel(root / "store", root / "kfp", "train", "--data", str(data), "--target", "churned", "--model", "shop")
    return root, data, proc


def test_sparse_constant_and_boolean_columns_train_with_warnings(trained) -> None:
    root, data, proc = trained
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out, err = proc.stdout, proc.stderr
    assert "promoted" in out
    # the columns table, before training: kind, missing rate and action of each column
    line = {ln.split("│")[1].strip(): ln for ln in out.splitlines() if ln.count("│") >= 4}
    assert "missing-indicator" in line["referral_bonus"] and "7" in line["referral_bonus"]
    assert "dropped: constant" in line["country"]
    assert "boolean" in line["newsletter"] and "id" in line["customer_id"]
    assert "warning: column 'referral_bonus' is 7" in err and "warning: column 'country' is dropped: constant" in err
    # redirected output is not cut at 80 columns: the long path is on one line
    assert str(data) in out
    reg = Registry(open_store(str(root / "store"), load_settings(store=str(root / "store"))), "shop")
    schema = reg.schema("v1")
    assert schema.column("newsletter").kind == "boolean" and schema.column("referral_bonus").missing_indicator
    card = reg.read("v1", "card.md").decode()
    assert "| `country` | categorical | 0% | dropped: constant" in card
    assert "| `referral_bonus` | numeric |" in card and "missing-indicator" in card


def test_a_refusal_names_every_error_one_line_each(trained) -> None:
    root, _, _ = trained
    frame = real_shaped(300, seed=22)
    frame["outcome"] = frame["churned"].map({0: "stayed", 1: "left"})
    frame["score_x2"] = frame["churned"] * 2.0
    path = root / "leaky.csv"
    frame.to_csv(path, index=False)
    proc = flywheel(root / "store", root / "kfp", "train", "--data", str(path), "--target", "churned", "--model", "leaky")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert any("data validation failed with 2 errors" in ln for ln in lines), proc.stderr
    assert any(ln.strip().startswith("- column 'outcome' leaks the target") for ln in lines), proc.stderr
    assert any(ln.strip().startswith("- column 'score_x2' leaks the target") for ln in lines), proc.stderr
    assert "and 1 more" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_missing_rate_jump_against_the_champion_stops_the_run(trained) -> None:
    root, _, proc = trained
    assert proc.returncode == 0
    frame = real_shaped(600, seed=23)
    frame.loc[np.arange(len(frame)) % 10 < 7, "income"] = np.nan  # ~5% missing before, ~70% now
    path = root / "broken_feed.csv"
    frame.to_csv(path, index=False)
    again = flywheel(root / "store", root / "kfp", "train", "--data", str(path), "--target", "churned", "--model", "shop")
    assert again.returncode == 1
    assert "column 'income' is 7" in again.stderr and "champion's training data (data break)" in again.stderr
    reg = Registry(open_store(str(root / "store"), load_settings(store=str(root / "store"))), "shop")
    assert reg.versions() == ["v1"] and reg.champion().version == "v1"
