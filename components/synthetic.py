"""A realistic synthetic customer-churn world: the demo's data and the benchmarks' scale data.

Numeric, categorical and date columns, missing values, an id and an event timestamp; later
batches can drift in two ways: covariate shift (the inputs move) and concept shift (the same
inputs lead to other labels).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PLANS = ["basic", "plus", "pro", "enterprise"]
REGIONS = ["north", "south", "east", "west", "central", "islands"]
DEVICES = ["ios", "android", "web"]


def churn(
    n: int,
    seed: int = 0,
    start: str = "2026-01-01",
    days: int = 30,
    covariate_shift: float = 0.0,
    concept_shift: bool = False,
    extra_numeric: int = 0,
) -> pd.DataFrame:
    """``n`` customers observed over ``days`` days from ``start``; target column ``churned``.

    ``covariate_shift`` moves usage features by that many standard deviations and skews the
    plan mix; ``concept_shift`` reverses how usage relates to churn.
    """
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp(start)
    event = t0 + pd.to_timedelta(np.sort(rng.uniform(0, days * 86400, n)), unit="s")
    s = covariate_shift
    age = rng.normal(41 + 6 * s, 12, n).clip(18, 90).round()
    income = rng.lognormal(10.8 + 0.25 * s, 0.45, n).round(-2)
    tenure = rng.gamma(2.0, 12.0 * (1 - 0.2 * min(s, 2)), n).round()
    sessions = rng.poisson(np.maximum(0.5, 18 - 5 * s), n).astype(float)
    basket = rng.gamma(3.0, 14 + 4 * s, n).round(2)
    calls = rng.poisson(1.2 + 0.8 * s, n).astype(float)
    discount = rng.beta(2, 8, n).round(3)
    plan_p = np.array([0.4, 0.3, 0.2, 0.1])
    if s:
        plan_p = plan_p * np.exp(np.array([0.6, 0.2, -0.2, -0.6]) * s)
        plan_p /= plan_p.sum()
    plan = rng.choice(PLANS, n, p=plan_p)
    region = rng.choice(REGIONS, n, p=[0.25, 0.2, 0.2, 0.15, 0.15, 0.05])
    device = rng.choice(DEVICES, n, p=[0.45, 0.4, 0.15]).astype(object)
    signup = (event - pd.to_timedelta(tenure * 30.4, unit="D")).normalize()

    plan_effect = pd.Series(plan).map({"basic": 0.5, "plus": 0.1, "pro": -0.3, "enterprise": -0.8}).to_numpy()
    usage = -0.2 * (sessions - 18) - 0.06 * (tenure - 24) + 0.9 * (calls - 1.2) - 4.0 * (discount - 0.2)
    if concept_shift:
        usage = -usage
    logit = -0.6 + usage + 1.5 * plan_effect + 0.01 * (np.nan_to_num(age, nan=41) - 41) + rng.normal(0, 0.3, n)
    churned = (rng.uniform(0, 1, n) < 1 / (1 + np.exp(-logit))).astype(int)

    frame = pd.DataFrame({
        "customer_id": [f"C{seed:03d}{i:08d}" for i in range(n)],
        "event_time": event,
        "signup_date": signup.strftime("%Y-%m-%d"),
        "age": age,
        "income": income,
        "tenure_months": tenure,
        "sessions_30d": sessions,
        "avg_basket": basket,
        "support_calls": calls,
        "discount": discount,
        "plan": plan,
        "region": region,
        "device": device,
    })
    for k in range(extra_numeric):
        frame[f"x{k:02d}"] = rng.normal(0.5 * s, 1.0, n).round(4)
    # missing values, as real exports have them
    for col, rate in (("age", 0.04), ("income", 0.08), ("device", 0.06), ("avg_basket", 0.03)):
        mask = rng.uniform(0, 1, n) < rate
        frame.loc[mask, col] = None
    frame["churned"] = churned
    return frame

