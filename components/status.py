"""Step status records: how a pipeline run's steps ended, as data in the store.

Every component body runs its stage through ``run_step``, which writes one record
``runs/<model>/<run>/steps/<step>.json`` (step, outcome, reason, cache key) when the stage
returns or raises. The local runner reads these records to say which step failed and why,
and which steps were served from kfp.local's cache, instead of reading console text.

Cache hits: kfp.local does not execute a component body on a cache hit, so a cached step
writes no record in the run that reused it. A cacheable step that has no record in a
succeeded run therefore came from the cache (its outputs exist: the run succeeded on them).

Which run: steps that are never cached take the run name as a parameter. Cached steps must
not (it would make every cache key unique); they learn the run from the ``run`` setting
(``FLYWHEEL_RUN``), which the embedded runner sets for the one child process that runs the
pipeline. On a cluster that setting is unset and cached steps write no record: the KFP API
reports task states there.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

from components.settings import ConfigError, Settings
from components.store import NotFound, Store, StoreError, open_store

T = TypeVar("T")
Outcome = Literal["succeeded", "failed"]


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors a user causes; components.data (and pandas) only when a step failed."""
    from components.data import DataError

    return (DataError, ConfigError, StoreError)


@dataclass(frozen=True)
class StepStatus:
    """How one step of one run ended."""

    step: str
    outcome: Outcome
    reason: str = ""
    cache_key: str | None = None
    error_type: str | None = None
    user_error: bool = False
    at: str = ""
    traceback: str = ""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()  # microseconds: records of one run sort in order


def steps_prefix(model: str, run: str) -> str:
    return f"runs/{model}/{run}/steps/"


def cache_key(**inputs: Any) -> str:
    """A digest of a step's inputs (parameters and input artifact URIs): equal inputs, equal key.

    It is Flywheel's own key, recorded so a reader can tell two executions on the same inputs
    apart from executions on changed inputs; kfp's internal cache key is not visible to a body.
    """
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write(store: Store, model: str, run: str, status: StepStatus) -> None:
    """Record a step's outcome; a retried step's first failure is kept (it says why), a success replaces it."""
    key, body = f"{steps_prefix(model, run)}{status.step}.json", json.dumps(asdict(status), indent=2).encode()
    if status.outcome == "failed":
        store.create(key, body)
    else:
        store.write(key, body)


def read_all(store: Store, model: str, run: str) -> dict[str, StepStatus]:
    """Every step record of a run, by step name (unreadable records are left out)."""
    out: dict[str, StepStatus] = {}
    for key in store.list(steps_prefix(model, run)):
        if not key.endswith(".json"):
            continue
        try:
            body = json.loads(store.read(key))
            out[body["step"]] = StepStatus(**body)
        except (NotFound, ValueError, KeyError, TypeError):
            continue
    return out


def sentence(exc: BaseException) -> str:
    """The first sentence of an error's message, on one line: library messages run on over lines
    and sentences, and a record or a log line says one thing."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def first_failure(records: dict[str, StepStatus]) -> StepStatus | None:
    """The earliest failed step of a run (later failures are usually its consequences)."""
    failed = sorted((r for r in records.values() if r.outcome == "failed"), key=lambda r: r.at)
    return failed[0] if failed else None


def run_step(settings: Settings, run: str | None, step: str, fn: Callable[[], T], key: str | None = None) -> T:
    """Run a stage and record how it ended under ``run`` (no record when the run is unknown); re-raise failures."""
    try:
        result = fn()
    except Exception as exc:
        _record(settings, run, StepStatus(step, "failed", str(exc) or type(exc).__name__, key, type(exc).__name__,
                                          isinstance(exc, _user_errors()), _now(), traceback.format_exc(limit=5)))
        raise
    _record(settings, run, StepStatus(step, "succeeded", "", key, at=_now()))
    return result


def _record(settings: Settings, run: str | None, status: StepStatus) -> None:
    if not run:
        return
    try:
        write(open_store(settings.store, settings), settings.model, run, status)
    except Exception:  # the stage's own outcome matters more than its record
        if status.outcome == "succeeded":
            raise  # a run whose records are missing would be misread as cached: fail loudly instead
