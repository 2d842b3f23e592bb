"""The drift decision statistic: one test per feature, calibrated for many features.

Why these tests and this rule (the numbers behind them are in the README too):

* One two-sample test per feature with a p-value, so the false-alarm rate can be stated:
  Kolmogorov-Smirnov for numeric features, a chi-square test of homogeneity on the 2 x K
  table of category counts for categorical ones. Distances without a p-value (Wasserstein,
  Jensen-Shannon, PSI; Evidently's defaults above 1000 rows) have thresholds that mean
  different things at different sample sizes, so they are recorded, never decided on.
* Evidently's own "chisquare" treats the reference counts as the true distribution (a
  goodness-of-fit test); with a reference of 20k-100k rows that ignores half the noise
  and over-alarms, so the homogeneity test here is registered with Evidently under
  ``chi2_homogeneity`` (services/monitoring/report.py) and the report shows exactly the
  p-values the decision used.
* Many features mean many chances of a false alarm: 20 independent tests at p < 0.05
  alarm on identical data 64% of the time. The decision therefore fires when
    (a) the share of features with p < COLUMN_ALPHA (0.05, the per-column flag users
        know from Evidently) reaches ``drift_share_threshold``, or
    (b) any feature's p-value is below FAMILY_ALPHA / n_features (Bonferroni: the chance
        of a false alarm over all features together is at most FAMILY_ALPHA = 1%).
  Rule (a) keeps the setting meaningful for broad, mild drift; rule (b) catches a strong
  shift in a few features (0.2 SD in 3 of 20 is a 15% share, below a 0.3 threshold, but
  gives p-values far below 0.01 / 20 at a few thousand rows). On identical data rule (a)
  fires with probability P(Binomial(20, 0.05) >= 6) = 0.0003, rule (b) at most 0.01.
* The tests run on a bounded uniform sample of the window (``sample_size`` rows) against
  the reference: KS at 50k vs 20k rows detects a mean shift of about 0.04 SD at the
  Bonferroni level, so a bigger sample adds cost, not answers, and a capped sample keeps a
  10M-row window from alarming on shifts too small to matter.
* Prediction drift is tested and reported but not part of the rule: for a fixed model it
  is a function of the features, so counting it would count the same drift twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

COLUMN_ALPHA = 0.05
FAMILY_ALPHA = 0.01
MIN_EXPECTED = 5.0  # chi-square is trusted when every cell expects at least this many rows

Method = Literal["ks", "chi2_homogeneity"]
METHOD_NAMES = {"ks": "K-S p_value", "chi2_homogeneity": "chi-square homogeneity p_value"}


@dataclass
class ColumnDrift:
    """One column's test: method, statistic, p-value and the two flags the rule reads."""

    column: str
    kind: str
    method: Method
    statistic: float
    p_value: float
    drifted: bool  # p < COLUMN_ALPHA: counts towards the drift share
    significant: bool  # p < FAMILY_ALPHA / n: survives the multiple-testing correction
    rows_reference: int
    rows_current: int


@dataclass
class DriftResult:
    """The per-feature tests and the decision they lead to."""

    columns: list[ColumnDrift]
    prediction: ColumnDrift | None
    share: float
    share_threshold: float
    column_alpha: float
    family_alpha: float
    bonferroni_alpha: float
    detected: bool
    reason: str
    untested: dict[str, str] = field(default_factory=dict)

    @property
    def drifted_columns(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.drifted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "share": self.share, "share_threshold": self.share_threshold, "column_alpha": self.column_alpha,
            "family_alpha": self.family_alpha, "bonferroni_alpha": self.bonferroni_alpha,
            "detected": self.detected, "reason": self.reason,
            "drifted_columns": [asdict(c) for c in self.drifted_columns],
            "columns": [asdict(c) for c in self.columns],
            "prediction": asdict(self.prediction) if self.prediction else None,
            "untested": self.untested,
        }


def method_for(kind: str) -> Method:
    """The test a column kind gets (numeric: KS; categorical and boolean: chi-square)."""
    return "ks" if kind == "numeric" else "chi2_homogeneity"


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov (two-sided; asymptotic p-value at these sizes)."""
    res = stats.ks_2samp(reference, current)
    return float(res.statistic), float(res.pvalue)


def chi2_homogeneity(reference: pd.Series, current: pd.Series) -> tuple[float, float]:
    """Chi-square test that two samples share one categorical distribution.

    Categories too rare for the chi-square approximation (expected count under 5 in
    either sample) are pooled into one cell, so a handful of unseen values neither
    crashes the test nor decides it alone.
    """
    ref = reference.astype(str).value_counts()
    cur = current.astype(str).value_counts()
    table = pd.concat([ref, cur], axis=1, keys=["ref", "cur"]).fillna(0.0)
    if table.empty or table["ref"].sum() == 0 or table["cur"].sum() == 0:
        return 0.0, 1.0
    n_ref, n_cur = table["ref"].sum(), table["cur"].sum()
    share = table.sum(axis=1) / (n_ref + n_cur)
    rare = (share * min(n_ref, n_cur)) < MIN_EXPECTED
    if rare.any():
        pooled = table[rare].sum()
        table = table[~rare]
        if pooled.sum() > 0:
            table.loc["__rare__"] = pooled
    if len(table) < 2:
        return 0.0, 1.0
    chi2, p, _, _ = stats.chi2_contingency(table.to_numpy().T, correction=False)
    return float(chi2), float(p)


def column_test(column: str, kind: str, reference: pd.Series, current: pd.Series) -> ColumnDrift:
    """Test one column (nulls dropped: null-rate changes are reported from the full window)."""
    method = method_for(kind)
    ref, cur = reference.dropna(), current.dropna()
    if len(ref) == 0 or len(cur) == 0:
        stat, p = 0.0, 1.0
    elif method == "ks":
        stat, p = ks_test(ref.to_numpy(dtype="float64"), cur.to_numpy(dtype="float64"))
    else:
        stat, p = chi2_homogeneity(ref, cur)
    return ColumnDrift(column, kind, method, stat, p, False, False, len(ref), len(cur))


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    kinds: dict[str, str],
    share_threshold: float,
    prediction_kind: str | None = None,
    prediction_column: str = "_prediction",
    column_alpha: float = COLUMN_ALPHA,
    family_alpha: float = FAMILY_ALPHA,
) -> DriftResult:
    """Test every feature of ``current`` against ``reference`` and apply the drift rule.

    ``kinds`` maps feature names to their schema kind; datetime features are not tested
    (they move with time by nature) and are listed in ``untested``.
    """
    untested = {c: "datetime features move with time by nature" for c, k in kinds.items() if k == "datetime"}
    tested = [c for c, k in kinds.items() if k != "datetime"]
    n = len(tested)
    bonferroni = family_alpha / n if n else family_alpha
    columns = []
    for c in tested:
        col = column_test(c, kinds[c], reference[c], current[c])
        col.drifted = col.p_value < column_alpha
        col.significant = col.p_value < bonferroni
        columns.append(col)
    prediction = None
    if prediction_kind and prediction_column in reference and prediction_column in current:
        prediction = column_test(prediction_column, prediction_kind, reference[prediction_column], current[prediction_column])
        prediction.drifted = prediction.p_value < column_alpha
        prediction.significant = prediction.p_value < family_alpha
    share = sum(c.drifted for c in columns) / n if n else 0.0
    strongest = min(columns, key=lambda c: c.p_value, default=None)
    by_share = share >= share_threshold
    by_bonferroni = strongest is not None and strongest.significant
    if by_share:
        reason = (f"drift: {sum(c.drifted for c in columns)} of {n} features have p < {column_alpha} "
                  f"(share {share:.2f} >= drift_share_threshold {share_threshold})")
    elif by_bonferroni:
        sig = [c.column for c in columns if c.significant]
        reason = (f"drift: {len(sig)} feature(s) ({', '.join(sig[:5])}) have p < {family_alpha}/{n} = {bonferroni:.2g} "
                  f"(Bonferroni); smallest p = {strongest.p_value:.3g} on {strongest.column} ({strongest.method})")
    else:
        reason = (f"no drift: share {share:.2f} < {share_threshold} and no feature below the Bonferroni level "
                  f"{family_alpha}/{n} = {bonferroni:.2g}"
                  + (f" (smallest p = {strongest.p_value:.3g} on {strongest.column})" if strongest else ""))
    return DriftResult(columns, prediction, share, share_threshold, column_alpha, family_alpha, bonferroni,
                       by_share or by_bonferroni, reason, untested)
