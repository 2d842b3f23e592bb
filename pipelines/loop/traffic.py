"""Production traffic for `flywheel run`: records in small concurrent requests, labels later."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd


class Traffic:
    """Production traffic: records sent in small requests by a few concurrent clients."""

    def __init__(self, url: str, records_per_request: int, concurrency: int, not_features: tuple[str, ...] = ()) -> None:
        self.url, self.per_request, self.concurrency, self.not_features = url, records_per_request, concurrency, not_features
        self.client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=concurrency * 2))
        self.served = 0
        self.failed = 0
        self.lock = threading.Lock()
        self.versions: dict[str, float] = {}  # version -> first time it answered

    def _post(self, records: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        try:
            r = self.client.post(f"{self.url}/predict", json={"records": records})
        except httpx.HTTPError:
            r = None
        with self.lock:
            if r is None or r.status_code != 200:
                self.failed += len(records)
                return [None] * len(records)  # keeps the answers aligned with the rows
            answers = r.json()
            self.served += len(answers)
            for a in answers:
                self.versions.setdefault(a["model_version"], time.monotonic())
            return answers

    def send(self, frame: pd.DataFrame) -> list[dict[str, Any] | None]:
        """Send every row; returns one answer per row, in row order (None where the request failed)."""
        features = frame.drop(columns=[c for c in self.not_features if c in frame.columns])
        records = [
            {k: (None if pd.isna(v) else v) for k, v in row.items()}
            for row in features.astype(object).to_dict(orient="records")
        ]
        n = self.per_request
        chunks = [records[i:i + n] for i in range(0, len(records), n)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.concurrency) as pool:
            results = list(pool.map(self._post, chunks))
        return [a for chunk in results for a in chunk]

    def label(self, answers: list[dict[str, Any] | None], labels: pd.Series) -> int:
        """The true labels arrive later: one feedback call per served record."""
        sent = 0
        for answer, label in zip(answers, labels.tolist(), strict=False):
            if answer is None:  # a failed request: no prediction to label (a shifted label would be wrong)
                continue
            r = self.client.post(f"{self.url}/feedback", json={"request_id": answer["request_id"], "label": int(label)})
            sent += r.status_code == 200
        return sent

    @contextlib.contextmanager
    def background(self, frame: pd.DataFrame, pause: float = 0.1) -> Iterator[None]:
        """Keep a trickle of traffic flowing (cycling through ``frame``) while the body runs: the swap test."""
        stop = threading.Event()

        def loop() -> None:
            i = 0
            while not stop.wait(pause):
                self.send(frame.iloc[i:i + self.per_request])
                i = (i + self.per_request) % max(1, len(frame))

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()

def wait_for_version(traffic: Traffic, version: str, timeout: float = 60) -> float | None:
    """Until the service answers with ``version`` (it follows the champion pointer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with traffic.lock:
            if version in traffic.versions:
                return traffic.versions[version]
        time.sleep(0.2)
    return None
