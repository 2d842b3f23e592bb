"""The real server under change: a promotion during traffic, SIGTERM during traffic, a store outage.

Each test drives traffic from a client thread and asserts, from the client's answers and
what reached the store, that no request failed and no served record was lost.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import boto3
import httpx
import pandas as pd
import pytest

from components.data import REQUEST_ID
from components.registry import Registry
from components.store import LocalStore, S3Store, Store
from services.serving.model import frame_to_records
from tests.serving.conftest import free_port, serving_settings
from tests.serving.models import LOGISTIC, add_version, wine_frame

RECORDS = frame_to_records(wine_frame().drop(columns=["target"]))
HGB = {"family": "hist_gradient_boosting", "params": {"learning_rate": 0.1, "max_leaf_nodes": 31}, "select": False}


class Traffic:
    """Clients posting one record per request until stopped; keeps every answer."""

    def __init__(self, url: str, concurrency: int = 8) -> None:
        self.url = url
        self.concurrency = concurrency
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.served: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(self._client(client, i) for i in range(self.concurrency)))

    async def _client(self, client: httpx.AsyncClient, n: int) -> None:
        i = n
        while not self._stop.is_set():
            i = (i + self.concurrency) % len(RECORDS)
            try:
                r = await client.post(f"{self.url}/predict", json={"records": [RECORDS[i]]})
            except httpx.HTTPError as exc:
                self.errors.append(type(exc).__name__)
                await asyncio.sleep(0.05)
                continue
            self.statuses[r.status_code] += 1
            if r.status_code == 200:
                self.served.extend(r.json())


def logged(store: Store, model: str) -> pd.DataFrame:
    keys = [k for k in store.list(f"predictions/{model}/") if k.endswith(".parquet")]
    frames = [pd.read_parquet(pd.io.common.BytesIO(store.read(k))) for k in keys]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[REQUEST_ID])


def wait_for(check, timeout: float = 30, every: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return False


def test_promotion_during_traffic_swaps_with_zero_failures(tmp_path: Path, start_server) -> None:
    store = LocalStore(tmp_path / "store")
    registry = Registry(store, "swap")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(registry, wine_frame(), "target", LOGISTIC)
        server = start_server(serving_settings(tmp_path / "store", "swap", tmp_path))
        with Traffic(server.url) as traffic:
            time.sleep(1.5)
            v2 = add_version(registry, wine_frame(), "target", HGB)  # promoted
            assert wait_for(lambda: traffic.served and traffic.served[-1]["model_version"] == v2)
            # a broken version promoted next is refused; v2 keeps answering
            v3 = registry.claim_version()
            good = {n: registry.read(v2, n) for n in ("schema.json", "metrics.json", "reference.parquet")}
            registry.write_version(v3, {**good, "model.joblib": b"not a pickle"}, {})
            registry.promote(v3, "broken on purpose")
            assert wait_for(lambda: "refused version v3" in server.log(), timeout=15)
            time.sleep(1.0)
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


def test_sigterm_during_traffic_loses_no_prediction_record(tmp_path: Path, start_server, serving_store: Path) -> None:
    # a buffer that never flushes by itself: only the shutdown flush can write these records
    settings = serving_settings(serving_store, "wine", tmp_path, log_flush_rows=1_000_000, log_flush_seconds=3600)
    store_copy = LocalStore(tmp_path / "store")
    settings = settings.model_copy(update={"store": str(store_copy.root)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(Registry(store_copy, "wine"), wine_frame(), "target", LOGISTIC)
    server = start_server(settings)
    with Traffic(server.url, concurrency=16) as traffic:
        assert wait_for(lambda: len(traffic.served) > 200, timeout=30)
        assert logged(store_copy, "wine").empty, "nothing is flushed before shutdown"
        code = server.terminate()
    assert code == 0, server.log()[-3000:]
    served = [a["request_id"] for a in traffic.served]
    rows = logged(store_copy, "wine")
    assert len(served) > 200
    assert len(rows) == len(served)
    assert sorted(rows[REQUEST_ID]) == sorted(served)
    assert "logs flushed" in server.log()


def test_store_outage_loses_nothing(tmp_path: Path, start_server, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="outage")
        settings = serving_settings("s3://outage/fw", "wine", tmp_path, log_flush_rows=50, log_flush_seconds=0.3,
                                    s3_max_attempts=1)
        store = S3Store(settings.store, settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            add_version(Registry(store, "wine"), wine_frame(), "target", LOGISTIC)
        server = start_server(settings)
        with Traffic(server.url, concurrency=4) as traffic:
            assert wait_for(lambda: len(traffic.served) > 100)
            moto.stop()
            spill = Path(settings.spill_dir)
            assert wait_for(lambda: any(spill.rglob("*.parquet")), timeout=30), "records spill while the store is down"
            during = len(traffic.served)
            time.sleep(1.0)
            assert len(traffic.served) > during, "requests keep being served during the outage"
            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            moto.start()
            time.sleep(1.0)
        assert set(traffic.statuses) == {200}, traffic.statuses
        served = sorted(a["request_id"] for a in traffic.served)
        assert wait_for(lambda: len(logged(store, "wine")) >= len(served) and not any(spill.rglob("*.parquet")), timeout=30)
        assert server.terminate() == 0
        rows = logged(store, "wine")
        assert sorted(rows[REQUEST_ID]) == served, "every served record logged exactly once"
        text = server.log()
        assert "spilled" in text
    finally:
        moto.stop()
