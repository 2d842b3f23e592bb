"""What every KFP component body shares: settings from parameters, and error records.

A component body is three lines: build settings, call the stage, write outputs. When a
stage fails on the user's input, the one-sentence reason is also written to the store
(``runs/<model>/<run>/error.json``) so the CLI can print it instead of a stack trace.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from components.registry import utcnow
from components.settings import ConfigError, Settings, load_settings
from components.store import StoreError, open_store

if TYPE_CHECKING:  # components.data brings pandas: imported where a spec is built
    from components.data import DatasetSpec

T = TypeVar("T")


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a user causes (bad data, config or store): recorded with their one sentence."""
    from components.data import DataError

    return (DataError, ConfigError, StoreError)


def settings(store: str, model: str, **extra: Any) -> Settings:
    return load_settings(store=store, model=model, **extra)


def spec(source: str, target: str, task: str, timestamp: str, id_columns: list, exclude: list, name: str) -> DatasetSpec:
    from components.data import DatasetSpec

    return DatasetSpec(
        source=source, target=target, task=task or None, timestamp=timestamp or None,  # type: ignore[arg-type]
        id_columns=tuple(id_columns), exclude=tuple(exclude), name=name,
    )


def run_key(model: str, run: str) -> str:
    return f"runs/{model}/{run}"


def record_dataset(settings: Settings, run: str, spec: DatasetSpec, fingerprint: str) -> None:
    """What this run trains on, so a version can say it and a retrain can read the same source."""
    from dataclasses import asdict

    body = {**asdict(spec), "fingerprint": fingerprint}
    open_store(settings.store, settings).write(f"{run_key(settings.model, run)}/dataset.json", json.dumps(body).encode())


def recorded_dataset(settings: Settings, run: str) -> dict[str, Any] | None:
    from components.store import NotFound

    try:
        return json.loads(open_store(settings.store, settings).read(f"{run_key(settings.model, run)}/dataset.json"))
    except NotFound:
        return None


def spec_of(dataset: dict[str, Any]) -> DatasetSpec:
    """The DatasetSpec a version recorded (manifest["dataset"])."""
    from components.data import DatasetSpec

    fields = {k: dataset[k] for k in ("source", "target", "task", "timestamp", "name") if k in dataset}
    return DatasetSpec(**fields, id_columns=tuple(dataset.get("id_columns", ())), exclude=tuple(dataset.get("exclude", ())))


def guarded(settings: Settings, run: str, step: str, fn: Callable[[], T]) -> T:
    """Run a stage; on failure record which step failed and why, then re-raise."""
    try:
        return fn()
    except Exception as exc:
        record = {
            "step": step, "error": str(exc), "type": type(exc).__name__, "user_error": isinstance(exc, user_errors()),
            "at": utcnow(), "traceback": traceback.format_exc(limit=5),
        }
        try:
            open_store(settings.store, settings).create(f"{run_key(settings.model, run)}/error.json", json.dumps(record).encode())
        except Exception:  # the original error matters more than the record
            pass
        raise
