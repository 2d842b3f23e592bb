"""Fault injection on the real parts: `bentoml serve`, an S3-protocol server (moto) on loopback, real signals.

One fault is one function ``(workdir) -> FaultResult`` registered with ``@fault``.
The tests (tests/e2e/serving/test_faults.py) run them and assert on what was kept; ``make bench``
runs every registered fault and prints the "faults" table (benchmarks/faults.py). A new
fault (a pipeline one too) is one more decorated function: served/stored may stay None
where no records are involved.

Counting: ``served`` is the request ids clients got a 200 for, ``stored`` the distinct ids in
the store (Parquet parts, plus quarantined JSON lines), ``duplicates`` the rows beyond one
per id, ``lost`` the served ids the store lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from components.data import REQUEST_ID
from components.formats import ARROW
from components.model_runtime import records_of
from components.net import free_port
from components.registry import Registry
from components.settings import Settings
from components.store import LocalStore
from services.serving.prediction_log import QUARANTINE, sigkill_loss_bound, unwritten_limit
from testkit.models import LOGISTIC, add_version, diabetes_frame, wine_frame
from testkit.odd_model import TRIGGER, add_odd_version
from testkit.server import Server, serving_settings

WINE_RECORDS = records_of(wine_frame().drop(columns=["target"]))
DIABETES_RECORDS = records_of(diabetes_frame().drop(columns=["target"]))
OUTAGE_SECONDS = 30.0
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class FaultResult:
    """What one fault did to the records: the row of the faults table."""

    fault: str
    outcome: str
    ok: bool
    served: int | None = None
    stored: int | None = None
    duplicates: int | None = None
    lost: int | None = None
    allowed_loss: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FAULTS: dict[str, Callable[[Path], FaultResult]] = {}


def fault(fn: Callable[[Path], FaultResult]) -> Callable[[Path], FaultResult]:
    """Register a fault function under its name (the table runs them in registration order)."""
    FAULTS[fn.__name__] = fn
    return fn


# --- traffic ------------------------------------------------------------------------------------

class Traffic:
    """Clients posting one record per request to /predict until stopped; keeps every answer."""

    def __init__(self, url: str, records: list[dict[str, Any]] | None = None, concurrency: int = 8) -> None:
        self.url = url
        self.records = records or WINE_RECORDS
        self.concurrency = concurrency
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.served: list[dict[str, Any]] = []
        self.refused: list[httpx.Response] = []  # the first few answers other than 200
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

    @property
    def ids(self) -> list[str]:
        return [a["request_id"] for a in self.served]

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(self._client(client, i) for i in range(self.concurrency)))

    async def _client(self, client: httpx.AsyncClient, n: int) -> None:
        i = n
        while not self._stop.is_set():
            i = (i + self.concurrency) % len(self.records)
            try:
                r = await client.post(f"{self.url}/predict", json={"records": [self.records[i]]})
            except httpx.HTTPError as exc:
                self.errors.append(type(exc).__name__)
                await asyncio.sleep(0.05)
                continue
            self.statuses[r.status_code] += 1
            if r.status_code == 200:
                self.served.extend(r.json())
            elif len(self.refused) < 10:
                self.refused.append(r)


def wait_for(check: Callable[[], Any], timeout: float = 30, every: float = 0.3) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds pass; returns whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return False


def metric(url: str, name: str, **labels: str) -> float:
    """The value of one sample on the server's /metrics (summed over workers by BentoML); 0 if absent."""
    return metric_in(httpx.get(f"{url}/metrics", timeout=10).text, name, **labels)


def metric_in(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``, in a scrape's text; 0 if absent."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def log_outcomes(url: str) -> Counter[str]:
    """``flywheel_prediction_log_records_total`` by outcome, summed over the server's workers, from one scrape."""
    out: Counter[str] = Counter()
    for labels, value in _samples(url, "flywheel_prediction_log_records_total"):
        out[labels["outcome"]] += value
    return out


def log_identities(c: Counter[str]) -> dict[str, float]:
    """What must be 0 once traffic stopped and the spill directory is empty: the two sides of each identity."""
    return {"buffered - (flushed + resent + quarantined + dropped)":
            c["buffered"] - (c["flushed"] + c["resent"] + c["quarantined"] + c["dropped"]),
            "spilled - resent": c["spilled"] - c["resent"]}


def _samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [(s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name]


# --- the store ----------------------------------------------------------------------------------

class HeldWrites:
    """WSGI middleware in front of moto: while ``open`` is clear, each PUT of a log part waits for it.

    A store that is slow to take the log's writes; ``held`` is how many wait now.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.open = threading.Event()
        self.open.set()
        self.held = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if environ["REQUEST_METHOD"] == "PUT" and ("/predictions/" in path or "/feedback/" in path):
            with self._lock:
                self.held += 1
            try:
                self.open.wait()
            finally:
                with self._lock:
                    self.held -= 1
        return self.app(environ, start_response)


class S3:
    """moto's S3 server on a fixed loopback port that can be stopped and started again (an outage).

    moto keeps its objects in this process, so they outlive a stop. The store is read with an
    own boto3 client, so nothing here touches the process environment. ``writes`` can hold
    the record logs' writes (``HeldWrites``). The server is moto's own application served
    as ``ThreadedMotoServer`` serves it, with that middleware in front.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = f"faults-{uuid.uuid4().hex[:12]}"
        self.uri = f"s3://{self.bucket}/fw"
        self.writes: HeldWrites | None = None
        self._server: Any = None
        import boto3
        from botocore.config import Config

        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing",
                                   config=Config(retries={"max_attempts": 2}))

    @property
    def env(self) -> dict[str, str]:
        """What a server process needs to reach this store."""
        return {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> S3:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        self.writes = HeldWrites(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", self.port, self.writes, threaded=True, request_handler=MotoRequestHandler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            assert self.writes is not None
            self.writes.open.set()  # no request stays held past the server
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> S3:
        self.start()
        self.client.create_bucket(Bucket=self.bucket)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def upload_tree(self, root: Path) -> None:
        """Copy a local store (a registry built with the project's own stages) into the bucket."""
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                self.client.put_object(Bucket=self.bucket, Key=f"fw/{path.relative_to(root).as_posix()}",
                                       Body=path.read_bytes())

    def objects(self, prefix: str) -> dict[str, bytes]:
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"fw/{prefix}"):
            for obj in page.get("Contents", []):
                key = obj["Key"][len("fw/"):]
                out[key] = self.client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
        return out


def local_objects(store: LocalStore, prefix: str) -> dict[str, bytes]:
    return {k: store.read(k) for k in store.list(prefix)}


def stored_ids(objects: dict[str, bytes]) -> list[str]:
    """Request ids of every stored prediction row (Parquet) and quarantined record (JSON lines)."""
    ids: list[str] = []
    for key, data in objects.items():
        if key.endswith(".parquet"):
            ids += pd.read_parquet(io.BytesIO(data), columns=[REQUEST_ID])[REQUEST_ID].tolist()
        elif key.endswith(".jsonl"):
            ids += [json.loads(line)["record"][REQUEST_ID] for line in data.decode().splitlines() if line]
    return ids


def predictions(read: Callable[[str], dict[str, bytes]], model: str) -> dict[str, bytes]:
    return {**read(f"predictions/{model}/"), **read(f"{QUARANTINE}/predictions/{model}/")}


def spilled_rows(spill: Path) -> int:
    """Prediction rows waiting in a spill directory (claimed parts included)."""
    n = 0
    for p in spill.rglob("*.parquet*"):
        if ".tmp-" in p.name:
            continue
        with contextlib.suppress(Exception):
            n += pd.read_parquet(p, columns=[REQUEST_ID]).shape[0]
    return n


def count(fault_name: str, served: list[str], stored: list[str], allowed_loss: int = 0) -> FaultResult:
    """The record counts of a fault; ``ok`` when nothing is stored twice and the loss is within bounds."""
    distinct = set(stored)
    lost = len(set(served) - distinct)
    dup = len(stored) - len(distinct)
    return FaultResult(fault_name, "", dup == 0 and lost <= allowed_loss, served=len(served), stored=len(distinct),
                       duplicates=dup, lost=lost, allowed_loss=allowed_loss)


def _s3_settings(s3: S3, work: Path, model: str, **extra: Any) -> Settings:
    return serving_settings(s3.uri, model, work, s3_endpoint_url=s3.endpoint,
                            **{"log_write_timeout_seconds": 1.0, "spill_lease_seconds": 3.0, **extra})


def _seed(s3: S3, work: Path, model: str) -> None:
    root = work / "seed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(Registry(LocalStore(root), model), wine_frame(), "target", LOGISTIC)
    s3.upload_tree(root)


def _server(settings: Settings, work: Path, name: str, env: dict[str, str] | None = None) -> Server:
    workers = settings.serving_workers or 1
    server = Server(settings, work / f"{name}.log", extra_env={"FLYWHEEL_SERVING_WORKERS": str(workers), **(env or {})})
    server.start()
    # /readyz answers from whichever worker takes the connection: wait until every worker has its model
    if not wait_for(lambda: server.log_text().count("serving version ") >= workers, timeout=120):
        server.stop()
        raise RuntimeError(f"not every one of {workers} workers loaded its model: {server.log_text()[-3000:]}")
    return server


# --- the faults ---------------------------------------------------------------------------------

@fault
def store_outage(work: Path, outage_seconds: float = OUTAGE_SECONDS) -> FaultResult:
    """Stop the S3 server for ``outage_seconds`` under steady traffic, then start it again.

    Two workers share the spill directory, as in a pod: each sends the other's parts. Once
    the spill directory is empty, the log's counters on /metrics (summed over the workers)
    must add up: buffered = flushed + resent + quarantined + dropped, and spilled = resent.
    """
    with S3() as s3:
        _seed(s3, work, "wine")
        settings = _s3_settings(s3, work, "wine", log_flush_rows=50, log_flush_seconds=0.3, serving_workers=2)
        spill = Path(settings.spill_dir)
        server = _server(settings, work, "outage", s3.env)
        try:
            with Traffic(server.url, concurrency=4) as traffic:
                wait_for(lambda: len(traffic.served) > 100)
                s3.stop()
                down_at, before = time.monotonic(), len(traffic.served)
                spilled_seen = wait_for(lambda: spilled_rows(spill) > 0, timeout=outage_seconds)
                time.sleep(max(0.0, outage_seconds - (time.monotonic() - down_at)))  # the outage lasts this long
                during = len(traffic.served) - before
                s3.start()
                back = len(traffic.served)
                wait_for(lambda: len(traffic.served) > back + 100)  # traffic goes on after the store is back
            served = traffic.ids
            drained = wait_for(lambda: spilled_rows(spill) == 0
                               and len(set(stored_ids(predictions(s3.objects, "wine")))) >= len(set(served)), timeout=60)
            # a part leaves the spill directory just before its send is counted
            settled = wait_for(lambda: _stored_count(log_outcomes(server.url)) >= len(served), timeout=30)
            counts = log_outcomes(server.url)
            code = server.terminate()
        finally:
            server.stop()
        stored = stored_ids(predictions(s3.objects, "wine"))
    result = count("S3 endpoint down 30 s during traffic", served, stored)
    failed = sum(n for status, n in traffic.statuses.items() if status != 200) + len(traffic.errors)
    gaps = log_identities(counts)
    adds_up = settled and counts["buffered"] == len(served) and not any(gaps.values())
    result.ok = result.ok and spilled_seen and drained and adds_up and during > 0 and failed == 0 and code == 0
    result.outcome = (f"{during} served while down, {counts['spilled']:.0f} spilled, {counts['resent']:.0f} re-sent "
                      f"after (2 workers, counts {'add up' if adds_up else 'do not add up'}); "
                      f"{failed} failed requests; exit {code}")
    result.details = {"served_during_outage": during, "log_outcomes": dict(counts), "identity_gaps": gaps,
                      "counts_settled": settled, "failed_requests": failed, "statuses": dict(traffic.statuses),
                      "spill_drained": drained, "exit_code": code}
    return result


@fault
def sigterm(work: Path) -> FaultResult:
    """SIGTERM while clients send; the buffer never flushes by itself, so only shutdown can save it."""
    store = LocalStore(work / "store")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(Registry(store, "wine"), wine_frame(), "target", LOGISTIC)
    settings = serving_settings(store.root, "wine", work, log_flush_rows=1_000_000, log_flush_seconds=3600)
    server = _server(settings, work, "sigterm")
    try:
        with Traffic(server.url, concurrency=16) as traffic:
            wait_for(lambda: len(traffic.served) > 200)
            before = len(stored_ids(predictions(lambda p: local_objects(store, p), "wine")))
            code = server.terminate()
    finally:
        server.stop()
    stored = stored_ids(predictions(lambda p: local_objects(store, p), "wine"))
    result = count("SIGTERM during traffic", traffic.ids, stored)
    result.ok = result.ok and code == 0 and before == 0 and "logs flushed" in server.log_text()
    result.outcome = f"exit {code}; {before} stored before the signal, every served record after"
    result.details = {"exit_code": code, "stored_before_signal": before}
    return result


@fault
def sigkill(work: Path) -> FaultResult:
    """SIGKILL with parts spilled (the store is down), then restart: the spill is re-sent."""
    flush_rows, concurrency = 50, 8
    with S3() as s3:
        _seed(s3, work, "wine")
        # two workers: two buffers to lose, one spill directory for both and for the restarted server
        settings = _s3_settings(s3, work, "wine", log_flush_rows=flush_rows, log_flush_seconds=0.5, serving_workers=2)
        spill = Path(settings.spill_dir)
        server = _server(settings, work, "sigkill", s3.env)
        try:
            with Traffic(server.url, concurrency=concurrency) as traffic:
                wait_for(lambda: len(traffic.served) > 200)
                s3.stop()
                wait_for(lambda: spilled_rows(spill) > 3 * flush_rows, timeout=30)
                server.kill()
            on_disk = spilled_rows(spill)
        finally:
            server.stop()
        s3.start()
        restarted = _server(settings, work, "restarted", s3.env)
        try:
            drained = wait_for(lambda: spilled_rows(spill) == 0, timeout=60)
            def resent_count() -> float:
                return metric(restarted.url, "flywheel_prediction_log_records_total", outcome="resent")

            # a part leaves the spill directory just before its re-send is counted
            wait_for(lambda: resent_count() >= on_disk, timeout=10)
            resent = resent_count()
            code = restarted.terminate()
        finally:
            restarted.stop()
        stored = stored_ids(predictions(s3.objects, "wine"))
    # a request can be logged and killed before its answer left: stored, never served
    workers = settings.serving_workers or 1
    bound = workers * sigkill_loss_bound(flush_rows, concurrency)  # each worker has its own buffer
    result = count("SIGKILL during traffic, store down", traffic.ids, stored, allowed_loss=bound)
    unanswered = len(set(stored) - set(traffic.ids))
    result.ok = result.ok and drained and resent >= on_disk > 0 and code == 0
    result.outcome = (f"{result.lost} lost (bound {bound} = {workers} workers x (2 x log_flush_rows - 1 + "
                      f"largest batch)); "
                      f"{on_disk} spilled at the kill, {resent:.0f} re-sent by the restarted server")
    result.details = {"spilled_at_kill": on_disk, "resent_on_restart": resent, "stored_not_answered": unanswered,
                      "spill_drained": drained}
    return result


@fault
def slow_store(work: Path) -> FaultResult:
    """The spooler slowed down: it writes to a store that holds each write until let go.

    The spill directory refuses parts (``spill_max_mb``), so the spooler sends them to the store
    itself, and S3 holds every prediction part it is sent. The log fills up to its bound; then
    a request waits ``log_append_wait_seconds`` for room and is answered 503 with Retry-After.
    While the writes are held nothing reaches the store, so the records answered 200 and not
    stored are exactly what the worker holds in memory: what a SIGKILL would lose.
    """
    flush_rows, concurrency, wait = 20, 4, 1.0
    with S3() as s3:
        assert s3.writes is not None
        _seed(s3, work, "wine")
        # writes may be held past the usual timeout: they are slow, not failing
        settings = _s3_settings(s3, work, "wine", log_flush_rows=flush_rows, log_flush_seconds=0.2, spill_max_mb=1e-6,
                                log_append_wait_seconds=wait, log_write_timeout_seconds=30.0, spill_lease_seconds=61.0)
        bound = (settings.serving_workers or 1) * sigkill_loss_bound(flush_rows, concurrency)  # one record per request
        server = _server(settings, work, "slow-store", s3.env)
        many: list[httpx.Response] = []
        try:
            with Traffic(server.url, concurrency=concurrency) as traffic:
                wait_for(lambda: len(traffic.served) > 50)
                s3.writes.open.clear()
                held = wait_for(lambda: s3.writes.held > 0)  # the spooler waits on the store
                before = len(traffic.served)
                refused = wait_for(lambda: traffic.statuses[503] > 0 or len(traffic.served) > before + 10 * bound)
                for body, kind in ((json.dumps({"records": WINE_RECORDS[:5]}).encode(), "application/json"),
                                   (_arrow_stream(WINE_RECORDS[:5]), ARROW)):  # the other two ways in
                    many.append(httpx.post(f"{server.url}/predict_many", content=body, headers={"content-type": kind},
                                           timeout=30))
                labels = _labels_until_refused(server.url, traffic.ids[:3 * unwritten_limit(flush_rows)])
            # every request has its answer, and the store has taken nothing since the writes were held
            in_memory = len(set(traffic.ids) - set(stored_ids(predictions(s3.objects, "wine"))))
            labels_stored_while_held = len(stored_ids(s3.objects("feedback/wine/")))
            s3.writes.open.set()
            again = httpx.post(f"{server.url}/predict", json={"records": WINE_RECORDS[:1]}, timeout=30)
            served = traffic.ids + [i for r in [*many, again] if r.status_code == 200 for i in _request_ids(r)]
            drained = wait_for(lambda: set(served) <= set(stored_ids(predictions(s3.objects, "wine"))), timeout=60)
            settled = wait_for(lambda: _stored_count(log_outcomes(server.url)) >= len(served), timeout=30)
            accepted = [r.json()["request_id"] for r in labels if r.status_code == 200]
            labels_kept = wait_for(lambda: sorted(stored_ids(s3.objects("feedback/wine/"))) == sorted(accepted), timeout=30)
            counts = log_outcomes(server.url)
            refused_requests = metric(server.url, "flywheel_requests_total", api="predict", status="503")
            code = server.terminate()
        finally:
            s3.writes.open.set()
            server.stop()
        stored = stored_ids(predictions(s3.objects, "wine"))
    answers = traffic.refused + [r for r in [*many, *labels] if r.status_code != 200]
    result = count("a slow store behind a full spill directory", served, stored)
    limit = unwritten_limit(flush_rows)
    told = all(r.status_code == 503 and r.headers.get("retry-after") == "1" and "log_append_wait_seconds" in r.text
               and r.elapsed.total_seconds() >= wait for r in answers)
    adds_up = settled and counts["buffered"] == len(served) == _stored_count(counts)
    result.ok = (result.ok and held and refused and limit <= in_memory <= bound and bool(answers) and told
                 and set(traffic.statuses) <= {200, 503} and again.status_code == 200 and drained and adds_up
                 and counts["refused"] > 0 and refused_requests > 0 and labels[-1].status_code == 503 and labels_kept
                 and code == 0)
    result.outcome = (f"at most {in_memory} records answered and not yet stored (bound {bound}); "
                      f"{traffic.statuses[503] + sum(r.status_code == 503 for r in [*many, *labels])} requests "
                      f"waited {wait:g} s for room and got 503 + "
                      f"Retry-After; {counts['refused']:.0f} records refused, none of those answered lost")
    result.details = {"in_memory_max": in_memory, "bound": bound, "limit": limit, "statuses": dict(traffic.statuses),
                      "predict_many_statuses": [r.status_code for r in many],
                      "feedback_statuses": dict(Counter(r.status_code for r in labels)),
                      "feedback_refusal": labels[-1].text[:300], "feedback_stored_while_held": labels_stored_while_held,
                      "feedback_accepted_all_stored": labels_kept,
                      "refusals": [{"status": r.status_code, "retry_after": r.headers.get("retry-after"),
                                    "body": r.text[:300], "seconds": r.elapsed.total_seconds()} for r in answers],
                      "refusals_as_documented": told, "write_held": held, "refused_seen": refused, "drained": drained,
                      "after_status": again.status_code, "log_outcomes": dict(counts), "counts_add_up": adds_up,
                      "refused_requests_metric": refused_requests, "exit_code": code}
    return result


def _labels_until_refused(url: str, ids: list[str]) -> list[httpx.Response]:
    """One label per request id, posted one by one until the feedback log refuses one."""
    answers = []
    for request_id in ids:
        answers.append(httpx.post(f"{url}/feedback", json={"request_id": request_id, "label": "class_0"}, timeout=30))
        if answers[-1].status_code != 200:
            break
    return answers


def _stored_count(c: Counter[str]) -> float:
    """Records the log has finished with: in the store, or quarantined or dropped."""
    return c["flushed"] + c["resent"] + c["quarantined"] + c["dropped"]


def _request_ids(r: httpx.Response) -> list[str]:
    if r.headers.get("content-type", "").startswith(ARROW):
        import pyarrow as pa

        return pa.ipc.open_stream(r.content).read_all().column("request_id").to_pylist()
    body = r.json()
    return body["request_ids"] if isinstance(body, dict) else [a["request_id"] for a in body]


def _arrow_stream(records: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa

    table = pa.Table.from_pylist(records)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@fault
def spill_full(work: Path, size_kib: int = 256) -> FaultResult:
    """A tiny tmpfs as spill directory (or, without mount rights, a spill size limit) while the store is down."""
    spill = work / "spill"
    spill.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(spill)],
                             capture_output=True, check=False).returncode == 0
    limit = {} if mounted else {"spill_max_mb": size_kib * 1024 / 1e6}
    try:
        with S3() as s3:
            _seed(s3, work, "wine")
            settings = _s3_settings(s3, work, "wine", log_flush_rows=20, log_flush_seconds=0.3, **limit)
            server = _server(settings, work, "spill-full", s3.env)
            try:
                with Traffic(server.url, concurrency=4) as traffic:
                    wait_for(lambda: len(traffic.served) > 50)
                    s3.stop()
                    said = wait_for(lambda: "cannot take predictions records" in server.log_text(), timeout=60)
                    errors = metric(server.url, "flywheel_prediction_log_spill_errors_total")
                    ready = httpx.get(f"{server.url}/readyz", timeout=10).status_code
                    before = len(traffic.served)
                    still_serving = wait_for(lambda: len(traffic.served) > before + 10, timeout=30)
                    s3.start()
                    back = len(traffic.served)
                    wait_for(lambda: len(traffic.served) > back + 10, timeout=30)  # traffic after the store is back
                served = traffic.ids
                drained = wait_for(lambda: len(set(stored_ids(predictions(s3.objects, "wine")))) >= len(set(served)),
                                   timeout=60)
                code = server.terminate()
            finally:
                server.stop()
            stored = stored_ids(predictions(s3.objects, "wine"))
    finally:
        if mounted:
            subprocess.run(["umount", str(spill)], check=False)
    line = next((ln for ln in server.log_text().splitlines() if "cannot take predictions records" in ln), "")
    failed = sum(n for status, n in traffic.statuses.items() if status != 200) + len(traffic.errors)
    result = count("spill directory full, store down", served, stored)
    result.ok = result.ok and said and errors > 0 and ready == 200 and still_serving and failed == 0 and drained
    how = f"tmpfs of {size_kib} KiB" if mounted else f"spill_max_mb={limit['spill_max_mb']}"
    result.outcome = f"{how}: error logged, {errors:.0f} spill errors counted, readyz {ready}, {failed} failed requests"
    result.details = {"mounted_tmpfs": mounted, "spill_errors": errors, "readyz": ready, "failed_requests": failed,
                      "error_line": line[-400:], "exit_code": code}
    return result


@fault
def unserialisable(work: Path) -> FaultResult:
    """One record of a 20-record request gets a prediction Parquet cannot hold; the buffer holds others too.

    The buffer is spooled every second here, while traffic keeps it holding other records; the
    quarantine is counted when the record is appended.
    """
    store = LocalStore(work / "store")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_odd_version(Registry(store, "odd"), diabetes_frame())
    settings = serving_settings(store.root, "odd", work, log_flush_rows=1_000_000, log_flush_seconds=1.0)
    server = _server(settings, work, "odd")
    try:
        with Traffic(server.url, DIABETES_RECORDS, concurrency=4) as traffic:
            wait_for(lambda: len(traffic.served) > 50)
            batch = [dict(r) for r in DIABETES_RECORDS[:20]]
            batch[7]["age"] = TRIGGER * 10
            r = httpx.post(f"{server.url}/predict_many", json={"records": batch}, timeout=30)
            answer = r.json() if r.status_code == 200 else {}
            wait_for(lambda: len(traffic.served) > 100)
            wait_for(lambda: metric(server.url, "flywheel_prediction_log_records_total", outcome="quarantined") > 0)
        quarantined = metric(server.url, "flywheel_prediction_log_records_total", outcome="quarantined")
        code = server.terminate()
    finally:
        server.stop()
    many = answer.get("request_ids", [])
    odd = many[7] if len(many) == 20 else None
    objects = predictions(lambda p: local_objects(store, p), "odd")
    parquet = stored_ids({k: v for k, v in objects.items() if k.endswith(".parquet")})
    jsonl = stored_ids({k: v for k, v in objects.items() if k.endswith(".jsonl")})
    result = count("a record that cannot be serialised", traffic.ids + many, parquet + jsonl)
    result.ok = (result.ok and r.status_code == 200 and odd is not None and jsonl == [odd] and odd not in parquet
                 and quarantined == 1 and code == 0)
    result.outcome = (f"{len(jsonl)} record quarantined by itself (quarantine/predictions/odd/…jsonl), "
                      f"{len(set(parquet))} others stored; /predict_many answered {r.status_code}")
    result.details = {"quarantined_ids": jsonl, "odd_id": odd, "quarantined_metric": quarantined, "exit_code": code}
    return result


def run_all(root: Path, only: set[str] | None = None) -> Iterator[FaultResult]:
    """Run every registered fault (or those whose function is named in ``only``) in its own directory."""
    for i, (name, fn) in enumerate(FAULTS.items()):
        if only and name not in only:
            continue
        work = root / f"fault-{i}"
        work.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        try:
            result = fn(work)
        except Exception as exc:  # noqa: BLE001 - one broken fault must not hide the others' rows; its error is its row
            result = FaultResult(name, f"error: {type(exc).__name__}: {exc}"[:300], False)
        result.details["seconds"] = round(time.monotonic() - start, 1)
        yield result
