"""The quality drop must pass its threshold and be more than sampling noise to count."""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.monitoring.quality import compare_quality


def _labelled(n: int, accuracy: float) -> pd.DataFrame:
    """Two balanced classes, exactly ``accuracy`` of each predicted right."""
    half = n // 2
    right = np.arange(half) < round(accuracy * half)
    y = np.repeat([0, 1], half)
    return pd.DataFrame({"y": y, "p": np.where(np.tile(right, 2), y, 1 - y)})


def test_a_drop_within_noise_does_not_count():
    frame = _labelled(250, 0.72)  # 0.06 below the holdout, but on 250 rows: 2 SE is about 0.07
    out = compare_quality("classification", frame, "y", "p", {"balanced_accuracy": 0.78, "rows": 300},
                          "balanced_accuracy", 0.05, len(frame), [0, 1])
    assert out["drop"] > 0.05 and out["drop_se"] > 0.03
    assert out["degraded"] is False and "standard errors" in out["reason"]


def test_a_real_drop_counts():
    frame = _labelled(20000, 0.70)
    out = compare_quality("classification", frame, "y", "p", {"balanced_accuracy": 0.78, "rows": 20000},
                          "balanced_accuracy", 0.05, len(frame), [0, 1])
    assert out["drop"] > 0.07 and out["degraded"] is True
