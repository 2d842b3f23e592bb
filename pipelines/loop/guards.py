"""Guards of `flywheel run`: one run per working folder, a free port, a writable store, and a
reset that can only ever touch the demo model in a local store unless told otherwise."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from components.settings import Settings
from components.store import LocalStore, Store, StoreError, open_store

DEMO_MODEL = "demo"


class LoopError(RuntimeError):
    """The loop cannot start or go on; the message says why in one sentence."""


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


def serving_port(port: int | None) -> int:
    """The loop's serving port: ``port`` if it is free, else a LoopError saying so; 0/None picks a free one."""
    from components.net import PortInUse, free_port

    try:
        return free_port(port)
    except PortInUse as exc:
        raise LoopError(f"{exc}; pass another with --port") from None


def check_reset(settings: Settings, store: Store, force: bool = False) -> None:
    """Refuse to reset anything but the demo model in a local store, unless ``force`` (--force-reset)."""
    if force:
        return
    if settings.model != DEMO_MODEL:
        raise LoopError(f"`flywheel run` starts the {DEMO_MODEL!r} model clean and will not reset model "
                        f"{settings.model!r}: pass --keep to continue from the store, or --force-reset to delete "
                        f"{settings.model}'s registry, logs and monitoring in {store.uri}")
    if not isinstance(store, LocalStore):
        raise LoopError(f"`flywheel run` resets the {DEMO_MODEL!r} model only in a local store, not in {store.uri}: "
                        "pass --keep to continue from the store, or --force-reset to delete it there")


def reset_demo(store: Store, settings: Settings, force: bool = False) -> None:
    """Forget the demo model's state (only its own keys), so the story starts from the beginning."""
    check_reset(settings, store, force)
    model = settings.model
    from services.monitoring.feedback import PARTS

    for prefix in (f"datasets/{model}/", PARTS.format(model=model), f"registry/{model}/", f"predictions/{model}/",
                   f"feedback/{model}/", f"monitoring/{model}/", f"triggers/{model}/", f"runs/{model}/"):
        for key in store.list(prefix):
            store.delete(key)


def check_store_writable(settings: Settings) -> None:
    """A store that cannot be written ends the loop before anything starts."""
    try:
        store = open_store(settings.store, settings)
        store.write("loop/.probe", b"ok")
        store.delete("loop/.probe")
    except (StoreError, OSError) as exc:
        raise LoopError(f"the store {settings.store} is not writable: {exc}") from None
