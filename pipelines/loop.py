"""The closed loop on one machine: `flywheel run` (and `make run`).

    demo world ─► train + promote v1 ─► serve ─► stable traffic + labels ─► monitor: no drift
        ─► drifted traffic + labels ─► monitor: drift ─► retrain (kfp.local) ─► promote ─► swap
        ─► concept-shifted traffic + labels ─► monitor: quality drop ─► retrain ─► promote ─► swap

Everything runs on the embedded default: the store is a local directory, training is the
real KFP pipeline on kfp.local, serving is the real BentoML server on loopback, monitoring is
the same pass the CronJob runs. The loop only plays the world's part: it writes the data,
sends the traffic and the labels that arrive later, and reads the outcome from the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from components.data import DatasetSpec
from components.registry import Registry
from components.settings import Settings
from components.store import Store, StoreError, open_store, write_parquet
from components.synthetic import churn
from pipelines.local import run_training
from pipelines.triggers import LocalTrigger

TARGET, TIMESTAMP = "churned", "event_time"
HISTORY = "datasets/{model}/history/"
PRODUCTION = "datasets/{model}/production/"  # the retraining window: the two latest labelled periods
ARCHIVE = "datasets/{model}/archive/"


class LoopError(RuntimeError):
    """The loop cannot start or go on; the message says why in one sentence."""


@dataclass(frozen=True)
class Period:
    """One period of production traffic: how the world behaves then."""

    name: str
    covariate_shift: float = 0.0
    concept_shift: bool = False


@dataclass(frozen=True)
class LoopSize:
    history_rows: int = 8000
    rows_per_period: int = 2000
    records_per_request: int = 20
    concurrency: int = 4
    periods: tuple[Period, ...] = (
        Period("stable"),
        Period("covariate-shift", covariate_shift=1.0),
        Period("concept-shift", covariate_shift=1.0, concept_shift=True),
    )


@dataclass
class LoopResult:
    """What happened, read back from the store and the service."""

    passes: list[dict[str, Any]] = field(default_factory=list)
    served: int = 0
    failed_requests: int = 0
    logged: int = 0  # prediction records this run added to the store
    feedback: int = 0
    swaps: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    champion: str | None = None
    seconds: float = 0.0
    store: str = ""


Say = Callable[[str], None]


# --- guards -----------------------------------------------------------------------------------

@contextlib.contextmanager
def single_run(settings: Settings) -> Iterator[None]:
    """One `flywheel run` at a time per working folder: a second one ends with one sentence."""
    lock_dir = Path(settings.spill_dir).expanduser().resolve().parent
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        handle = open(lock_dir / "run.lock", "a+")
    except OSError as exc:
        raise LoopError(f"cannot create the run lock in {lock_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        raise LoopError(f"another `flywheel run` is already running here (pid {handle.read().strip() or '?'}); "
                        "wait for it or stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def free_port(port: int | None) -> int:
    """``port`` if it is free, else a clear error; 0/None picks a free loopback port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port or 0))
        except OSError:
            raise LoopError(f"port {port} is already in use; pass another with --port") from None
        return s.getsockname()[1]


def reset_demo(store: Store, model: str) -> None:
    """Forget the demo model's state (only its own keys), so the story starts from the beginning."""
    for prefix in (f"datasets/{model}/", f"datasets/{model}-retrain/", f"registry/{model}/", f"predictions/{model}/",
                   f"feedback/{model}/", f"monitoring/{model}/", f"triggers/{model}/", f"runs/{model}/"):
        for key in store.list(prefix):
            store.delete(key)


# --- the service ------------------------------------------------------------------------------

class Server:
    """The real BentoML server as a child process (its own process group)."""

    def __init__(self, settings: Settings, port: int, log_path: Path) -> None:
        from services.serving.launch import start

        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log_path, "ab")
        self.proc = start(settings, port, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LoopError(f"the serving process exited with code {self.proc.returncode}; see {self.log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise LoopError(f"the service was not ready within {timeout:.0f} s; see {self.log.name}")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM: the service flushes its prediction log before it exits."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


class Traffic:
    """Production traffic: records sent in small requests by a few concurrent clients."""

    def __init__(self, url: str, size: LoopSize) -> None:
        self.url, self.size = url, size
        self.client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=size.concurrency * 2))
        self.served = 0
        self.failed = 0
        self.lock = threading.Lock()
        self.versions: dict[str, float] = {}  # version -> first time it answered

    def _post(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            r = self.client.post(f"{self.url}/predict", json={"records": records})
        except httpx.HTTPError:
            r = None
        with self.lock:
            if r is None or r.status_code != 200:
                self.failed += len(records)
                return []
            answers = r.json()
            self.served += len(answers)
            for a in answers:
                self.versions.setdefault(a["model_version"], time.monotonic())
            return answers

    def send(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        """Send every row; returns the answers in row order (request ids, versions)."""
        features = frame.drop(columns=[TARGET, TIMESTAMP, "customer_id"])
        records = [
            {k: (None if pd.isna(v) else v) for k, v in row.items()}
            for row in features.astype(object).to_dict(orient="records")
        ]
        n = self.size.records_per_request
        chunks = [records[i:i + n] for i in range(0, len(records), n)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.size.concurrency) as pool:
            results = list(pool.map(self._post, chunks))
        return [a for chunk in results for a in chunk]

    def label(self, answers: list[dict[str, Any]], labels: pd.Series) -> int:
        """The true labels arrive later: one feedback call per served record."""
        sent = 0
        for answer, label in zip(answers, labels.tolist(), strict=False):
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
                self.send(frame.iloc[i:i + self.size.records_per_request])
                i = (i + self.size.records_per_request) % max(1, len(frame))

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()


# --- the loop ---------------------------------------------------------------------------------

def run_loop(settings: Settings, say: Say, port: int | None = None, fresh: bool = True,
             size: LoopSize = LoopSize()) -> LoopResult:
    """Play the whole loop; everything started here is stopped before it returns or raises."""
    start = time.monotonic()
    store = open_store(settings.store, settings)
    result = LoopResult(store=store.uri)
    model = settings.model
    reg = Registry(store, model)
    with single_run(settings):
        port = free_port(port)
        if fresh:
            reset_demo(store, model)
        logged_before = _count_logged(store, model)
        feedback_before = _count_logged(store, model, "feedback")
        history = HISTORY.format(model=model)
        if reg.champion() is None:
            say(f"[1/6] writing the demo world to {store.uri}/{history}")
            write_parquet(store, f"{history}part-000.parquet",
                          churn(size.history_rows, seed=1, start="2026-01-01", days=59))
            say("[2/6] training the first champion (KFP pipeline on kfp.local)")
            first = run_training(DatasetSpec(history, TARGET, timestamp=TIMESTAMP, name=model), settings)
            say(f"      {first['version']}: {'promoted' if first['promoted'] else 'not promoted'} - {first['reason']}")
            if reg.champion() is None:
                raise LoopError(f"the first model was not promoted: {first['reason']}")
        else:
            say(f"[1-2/6] continuing from the store: champion {reg.champion().version}")
        log_dir = Path(settings.spill_dir).expanduser().resolve().parent
        say(f"[3/6] starting the service on http://127.0.0.1:{port} (log: {log_dir / 'serving.log'})")
        server = Server(settings, port, log_dir / "serving.log")
        try:
            server.wait_ready()
            traffic = Traffic(server.url, size)
            trigger = LocalTrigger(settings, DatasetSpec(PRODUCTION.format(model=model), TARGET, timestamp=TIMESTAMP,
                                                         name=model))
            day = pd.Timestamp("2026-03-01")
            for i, period in enumerate(size.periods):
                frame = churn(size.rows_per_period, seed=10 + i, start=str(day.date()), days=7,
                              covariate_shift=period.covariate_shift, concept_shift=period.concept_shift)
                day += pd.Timedelta(days=7)
                step = "4/6" if i == 0 else "5/6"
                say(f"[{step}] {period.name}: {len(frame)} records of production traffic, then their labels")
                t_first = time.monotonic()
                answers = traffic.send(frame)
                result.feedback += traffic.label(answers, frame[TARGET])
                # the service logs off the request path; the pass must see this period whole
                _wait_landed(store, model, "predictions", logged_before + traffic.served, settings)
                _wait_landed(store, model, "feedback", feedback_before + result.feedback, settings)
                _land_labelled_period(store, model, period.name, i, frame)
                champion_before = reg.champion().version
                say(f"      monitoring pass ({len(answers)} served so far in this period)")
                with traffic.background(frame):
                    summary = _monitor(settings, store, trigger)
                    champion_after = reg.champion().version
                    swapped_at = None
                    if champion_after != champion_before:
                        swapped_at = _wait_for_version(traffic, champion_after)
                result.passes.append(_pass_row(period.name, summary))
                say(f"      {result.passes[-1]['line']}")
                if champion_after != champion_before:
                    result.swaps.append({
                        "period": period.name, "from": champion_before, "to": champion_after,
                        "seconds_from_first_drifted_request": round(swapped_at - t_first, 1) if swapped_at else None,
                    })
                    say(f"      the service now answers with {champion_after} (was {champion_before})")
        except KeyboardInterrupt:
            say("interrupted: stopping the service; what it served is logged and the registry is unchanged by the stop")
            raise
        finally:
            say("[6/6] stopping the service (it flushes its prediction log)")
            server.stop()
            if "traffic" in locals():
                result.served, result.failed_requests = traffic.served, traffic.failed
        result.logged = _count_logged(store, model) - logged_before
        result.versions = _versions(reg)
        champ = reg.champion()
        result.champion = champ.version if champ else None
    result.seconds = round(time.monotonic() - start, 1)
    return result


def _land_labelled_period(store: Store, model: str, name: str, index: int, frame: pd.DataFrame) -> None:
    """Labelled data lands in the training window; the window keeps the two latest periods."""
    production = PRODUCTION.format(model=model)
    write_parquet(store, f"{production}period-{index:02d}-{name}.parquet", frame)
    parts = sorted(store.list(production))
    for old in parts[:-2]:
        store.write(ARCHIVE.format(model=model) + old.rsplit("/", 1)[-1], store.read(old))
        store.delete(old)


def _monitor(settings: Settings, store: Store, trigger: LocalTrigger) -> Any:
    from services.monitoring.monitor import run_pass

    return run_pass(settings, store, trigger)


def _wait_for_version(traffic: Traffic, version: str, timeout: float = 60) -> float | None:
    """Until the service answers with ``version`` (it follows the champion pointer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with traffic.lock:
            if version in traffic.versions:
                return traffic.versions[version]
        time.sleep(0.2)
    return None


def _pass_row(period: str, s: Any) -> dict[str, Any]:
    drift = s.drift or {}
    quality = s.quality or {}
    run = s.decision.get("run") or {}
    line = (f"status {s.status}; drift share {drift.get('share', 0):.2f}; "
            f"{'RETRAIN: ' if s.decision.get('retrain') else ''}{s.decision.get('reason', '')}")
    if run:
        line += f" -> {run.get('version')} {'promoted' if run.get('promoted') else 'not promoted'}"
    return {
        "period": period, "status": s.status, "rows": s.rows.get("evaluated", 0),
        "drift_share": drift.get("share"), "drift_detected": drift.get("detected"),
        "quality": quality.get("reason"), "retrain": bool(s.decision.get("retrain")), "reason": s.decision.get("reason"),
        "new_version": run.get("version"), "promoted": run.get("promoted"),
        "report": (s.outputs or {}).get("report"), "summary": (s.outputs or {}).get("summary"), "line": line,
    }


def _wait_landed(store: Store, model: str, kind: str, expected: int, settings: Settings, timeout: float = 60) -> None:
    """Until ``expected`` records of ``kind`` are in the store (flushes happen every few seconds)."""
    deadline = time.monotonic() + timeout
    while _count_logged(store, model, kind) < expected:
        if time.monotonic() > deadline:
            raise LoopError(f"{kind} records did not reach the store within {timeout:.0f} s "
                            f"({_count_logged(store, model, kind)} of {expected})")
        time.sleep(min(1.0, settings.log_flush_seconds / 2))


def _count_logged(store: Store, model: str, kind: str = "predictions") -> int:
    import io

    import pyarrow.parquet as pq

    total = 0
    for key in store.list(f"{kind}/{model}/"):
        if key.endswith(".parquet"):
            total += pq.ParquetFile(io.BytesIO(store.read(key))).metadata.num_rows
    return total


def _versions(reg: Registry) -> list[dict[str, Any]]:
    out = []
    for v in reg.versions():
        m = reg.manifest(v)
        d = reg.decision(v) or {}
        out.append({"version": v, "metric": m.get("primary_metric"), "score": m.get("score"),
                    "promoted": d.get("promoted"), "reason": d.get("reason")})
    return out


def check_store_writable(settings: Settings) -> None:
    """A store that cannot be written ends the loop before anything starts."""
    try:
        store = open_store(settings.store, settings)
        store.write("loop/.probe", b"ok")
        store.delete("loop/.probe")
    except (StoreError, OSError) as exc:
        raise LoopError(f"the store {settings.store} is not writable: {exc}") from None
