"""The drift decision statistic (the function every pass decides with), over many seeds.

Given windows drawn from the reference's own distribution, or with a known shift,
when the decision rule runs, then it alarms as rarely / as reliably as its design says.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.monitoring.drift import chi2_homogeneity, detect_drift

N_FEATURES = 20
NUMERIC = [f"n{i}" for i in range(16)]
CATEGORICAL = [f"c{i}" for i in range(4)]
KINDS = {**{c: "numeric" for c in NUMERIC}, **{c: "categorical" for c in CATEGORICAL}}
REFERENCE_ROWS = 20_000  # what the register stage stores as reference.parquet
SEEDS = range(20)


def draw(n: int, rng: np.random.Generator, shift: dict[str, float] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(rng.normal(size=(n, len(NUMERIC))), columns=NUMERIC)
    for c in CATEGORICAL:
        frame[c] = rng.choice(["a", "b", "c", "d", "e"], size=n, p=[0.4, 0.25, 0.15, 0.15, 0.05])
    for c, sd in (shift or {}).items():
        frame[c] += sd
    return frame


def test_identical_windows_rarely_alarm() -> None:
    alarms, naive = 0, 0
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        result = detect_drift(draw(REFERENCE_ROWS, rng), draw(10_000, rng), KINDS, share_threshold=0.3)
        alarms += result.detected
        naive += any(c.p_value < 0.05 for c in result.columns)
    assert alarms / len(SEEDS) <= 0.05, f"{alarms} false alarms in {len(SEEDS)} identical windows"
    # the correction matters: "any feature at p < 0.05" alarms on most identical windows
    assert naive / len(SEEDS) >= 0.3


def test_shift_of_a_fifth_sd_in_three_of_twenty_features_is_detected() -> None:
    detected = 0
    for seed in SEEDS:
        rng = np.random.default_rng(1000 + seed)
        ref, cur = draw(REFERENCE_ROWS, rng), draw(50_000, rng, {"n0": 0.2, "n1": 0.2, "n2": 0.2})
        result = detect_drift(ref, cur, KINDS, share_threshold=0.3)
        detected += result.detected
        assert {c.column for c in result.columns if c.significant} >= {"n0", "n1", "n2"}
        # 3 of 20 is a 15% share: the Bonferroni rule alone must catch it
        assert detect_drift(ref, cur, KINDS, share_threshold=1.0).detected
    assert detected / len(SEEDS) >= 0.95


def test_broad_mild_drift_is_detected_by_share() -> None:
    rng = np.random.default_rng(7)
    shift = {c: 0.03 for c in NUMERIC[:8]}
    result = detect_drift(draw(REFERENCE_ROWS, rng), draw(50_000, rng, shift), KINDS, share_threshold=0.3)
    assert result.detected and result.share >= 0.3
    assert "drift_share_threshold" in result.reason


def test_categorical_test_is_calibrated_and_sensitive() -> None:
    rng = np.random.default_rng(3)
    cats = ["a", "b", "c", "d"]
    ps = [chi2_homogeneity(pd.Series(rng.choice(cats, 5000)), pd.Series(rng.choice(cats, 5000)))[1] for _ in range(200)]
    assert 0.02 <= np.mean(np.array(ps) < 0.05) <= 0.09  # uniform p-values under the null
    moved = chi2_homogeneity(pd.Series(rng.choice(cats, 5000)),
                             pd.Series(rng.choice(cats, 5000, p=[0.31, 0.23, 0.23, 0.23])))[1]
    assert moved < 1e-3


def test_unseen_and_rare_categories_do_not_break_the_test() -> None:
    ref = pd.Series(["a"] * 500 + ["b"] * 500)
    cur = pd.Series(["a"] * 495 + ["b"] * 500 + ["zz"] * 2 + [None] * 3)
    stat, p = chi2_homogeneity(ref, cur)
    assert np.isfinite(stat) and p > 0.05


def test_datetime_features_are_not_tested_and_say_why() -> None:
    rng = np.random.default_rng(0)
    ref, cur = draw(2000, rng), draw(2000, rng)
    ref["when"] = pd.Timestamp("2025-01-01")
    cur["when"] = pd.Timestamp("2026-01-01")
    result = detect_drift(ref, cur, {**KINDS, "when": "datetime"}, 0.3)
    assert "when" in result.untested and all(c.column != "when" for c in result.columns)


@pytest.mark.parametrize("kind", ["numeric", "categorical"])
def test_prediction_drift_is_reported_but_not_decided_on(kind: str) -> None:
    rng = np.random.default_rng(1)
    ref, cur = draw(5000, rng), draw(5000, rng)
    ref["_prediction"] = rng.normal(size=5000) if kind == "numeric" else rng.choice(["0", "1"], 5000)
    cur["_prediction"] = rng.normal(size=5000) + 1 if kind == "numeric" else rng.choice(["0", "1"], 5000, p=[0.9, 0.1])
    result = detect_drift(ref, cur, KINDS, 0.3, prediction_kind=kind)
    assert result.prediction is not None and result.prediction.significant
    assert not result.detected
