"""The real server under change: a promotion during traffic answers every request.

SIGTERM, SIGKILL, a store outage and the other faults are in test_faults.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import httpx

from components.registry import Registry
from components.store import LocalStore
from testkit.faults import Traffic, metric, wait_for
from testkit.models import LOGISTIC, add_version, wine_frame
from testkit.server import serving_settings

HGB = {"family": "hist_gradient_boosting", "params": {"learning_rate": 0.1, "max_leaf_nodes": 31}, "select": False}


def test_promotion_during_traffic_swaps_with_zero_failures(tmp_path: Path, start_server) -> None:
    store = LocalStore(tmp_path / "store")
    registry = Registry(store, "swap")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(registry, wine_frame(), "target", LOGISTIC)
        server = start_server(serving_settings(tmp_path / "store", "swap", tmp_path))
        with Traffic(server.url) as traffic:
            assert wait_for(lambda: len(traffic.served) >= 20), "v1 answers before the promotion"
            v2 = add_version(registry, wine_frame(), "target", HGB)  # promoted
            assert wait_for(lambda: traffic.served and traffic.served[-1]["model_version"] == v2)
            # a broken version promoted next is refused; v2 keeps answering
            v3 = registry.claim_version()
            good = {n: registry.read(v2, n) for n in ("schema.json", "metrics.json", "reference.parquet")}
            registry.write_version(v3, {**good, "model.joblib": b"not a pickle"}, {})
            registry.promote(v3, "broken on purpose")
            assert wait_for(lambda: metric(server.url, "flywheel_model_swaps_total", outcome="refused") >= 1, timeout=15)
            refused_at = len(traffic.served)
            assert wait_for(lambda: len(traffic.served) >= refused_at + 20), "v2 answers after the refusal"
    assert traffic.statuses[200] > 50
    assert set(traffic.statuses) == {200}, traffic.statuses
    assert traffic.errors == []
    versions = [a["model_version"] for a in traffic.served]
    assert versions[0] == "v1" and versions[-1] == "v2" and "v3" not in versions
    first_v2 = versions.index("v2")
    assert set(versions[first_v2:]) == {"v2"}, "once swapped, the old version never answers again"
    text = httpx.get(f"{server.url}/metrics").text
    assert 'flywheel_model_swaps_total{outcome="refused"}' in text
    assert httpx.get(f"{server.url}/readyz").status_code == 200
