"""The model in service: a registry version loaded (components/model_runtime.py) and swapped in atomically.

``ModelHolder`` keeps the one in service: pinned to a version, or following the champion
pointer, where a new champion is loaded in a background thread and replaces the old one in a
single reference assignment, so a request sees either the old model or the new one, never a
half-loaded state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from components.deploy import FOLLOW_CHAMPION
from components.model_runtime import LoadedModel, ModelRefused, load_version
from components.registry import Registry

log = logging.getLogger("flywheel.serving")

Listener = Callable[[str, str, str, str], None]  # (event, version, runtime, reason)


class ModelHolder:
    """The model in service, pinned or following the champion, swapped without downtime."""

    def __init__(self, registry: Registry, version: str = FOLLOW_CHAMPION, poll_seconds: float = 2.0,
                 prefer_onnx: bool = True, listener: Listener | None = None, strict_fields: bool = False) -> None:
        self.registry = registry
        self.follow = version == FOLLOW_CHAMPION
        self.pinned = None if self.follow else version
        self.poll_seconds = poll_seconds
        self.prefer_onnx = prefer_onnx
        self.strict_fields = strict_fields
        self.listener = listener or (lambda *a: None)
        self.current: LoadedModel | None = None
        self._refused: dict[str, float] = {}  # version -> when; retried after a while
        self._stop = threading.Event()
        self._loaded = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self.current is not None

    def wait_ready(self, timeout: float) -> bool:
        """Block until a model is in service (True) or ``timeout`` seconds pass (False)."""
        return self._loaded.wait(timeout)

    def start(self) -> None:
        """Load in the background (probes answer meanwhile) and keep following the champion."""
        self._thread = threading.Thread(target=self._run, name="flywheel-model-holder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def wanted(self) -> str | None:
        """The version that should serve now."""
        if not self.follow:
            return self.pinned
        champ = self.registry.champion()
        return champ.version if champ else None

    def refresh(self) -> bool:
        """One step: load and swap in the wanted version if it differs; True when swapped."""
        try:
            wanted = self.wanted()
        except Exception as exc:  # noqa: BLE001 - the holder thread outlives any failure to read the pointer (the store, a bad file): logged, read again at the next poll
            log.warning("cannot read the champion pointer of %s: %s", self.registry.model, exc)
            return False
        if wanted is None or (self.current is not None and self.current.version == wanted):
            return False
        refused_at = self._refused.get(wanted)
        if refused_at is not None and time.monotonic() - refused_at < 60:
            return False
        try:
            loaded = load_version(self.registry, wanted, self.prefer_onnx, self.strict_fields)
        except ModelRefused as exc:
            self._refused[wanted] = time.monotonic()
            serving = self.current.version if self.current else "nothing"
            log.error("refused version %s of %s, still serving %s: %s", wanted, self.registry.model, serving, exc)
            self.listener("refused", wanted, "", str(exc))
            return False
        previous = self.current
        self.current = loaded  # the swap: one reference assignment
        self._loaded.set()
        self._refused.pop(wanted, None)
        log.info("serving version %s of %s with %s (was %s)%s", loaded.version, self.registry.model,
                 loaded.runtime_name, previous.version if previous else "nothing",
                 f"; {loaded.fallback_reason}" if loaded.fallback_reason else "")
        self.listener("swapped", loaded.version, loaded.runtime_name, previous.version if previous else "")
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            if self.ready and not self.follow:
                return
            self._stop.wait(self.poll_seconds)
