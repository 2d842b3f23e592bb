"""The model registry: immutable versions and one champion pointer, all in the store.

    registry/<model>/versions/<version>/  model.joblib schema.json metrics.json
                                          reference.parquet card.md manifest.json (last)
    registry/<model>/champion.json        which version serves, and its predecessor
    registry/<model>/decisions/<version>.json   the promotion decision and its reason
    registry/<model>/history/<time>-<version>.json  every champion change

A version is visible only once its manifest exists. The champion pointer changes by a
conditional replace, so two concurrent promotions never lose an update.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from components.store import NotFound, Store, StoreError

if TYPE_CHECKING:  # pandas/joblib only where a schema or model is read: pointer-only tasks start faster
    from components.data import Schema

MANIFEST = "manifest.json"
_VERSION = re.compile(r"^v(\d+)$")


class RegistryError(RuntimeError):
    """A registry operation cannot be done; the message says which version and why."""


class PromotionConflict(RegistryError):
    """The champion changed under a promotion that was decided against the old one."""


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Champion:
    version: str
    previous: str | None
    promoted_at: str
    reason: str
    etag: str = ""


class Registry:
    """Versions and the champion of one model."""

    def __init__(self, store: Store, model: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", model):
            raise RegistryError(f"model name {model!r} must be letters, digits, '.', '_' or '-'")
        self.store = store
        self.model = model
        self.root = f"registry/{model}"

    # --- versions -------------------------------------------------------------------------
    def key(self, version: str, name: str) -> str:
        return f"{self.root}/versions/{version}/{name}"

    def versions(self) -> list[str]:
        """Visible versions (with a manifest), oldest first."""
        found = set()
        for k in self.store.list(f"{self.root}/versions/"):
            parts = k.split("/")
            if len(parts) >= 5 and parts[-1] == MANIFEST:
                found.add(parts[-2])
        return sorted(found, key=_version_number)

    def claim_version(self) -> str:
        """Reserve the next version number (a conditional create, safe across runs)."""
        claimed = [k.rsplit("/", 1)[-1] for k in self.store.list(f"{self.root}/claims/")]
        n = max((_version_number(v) for v in claimed if _VERSION.match(v)), default=0) + 1
        while not self.store.create(f"{self.root}/claims/v{n}", utcnow().encode()):
            n += 1
        return f"v{n}"

    def write_version(self, version: str, files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        """Write a version's files, then its manifest: the version appears in one step."""
        if self.store.exists(self.key(version, MANIFEST)):
            raise RegistryError(f"version {version} of {self.model} already exists and is immutable")
        digests = {}
        for name, data in files.items():
            self.store.write(self.key(version, name), data)
            digests[name] = hashlib.sha256(data).hexdigest()
        body = {**manifest, "model": self.model, "version": version, "created_at": utcnow(), "files": digests}
        if not self.store.create(self.key(version, MANIFEST), json.dumps(body, indent=2, default=str).encode()):
            raise RegistryError(f"version {version} of {self.model} was written concurrently")

    def manifest(self, version: str) -> dict[str, Any]:
        try:
            return json.loads(self.store.read(self.key(version, MANIFEST)))
        except NotFound:
            raise RegistryError(f"model {self.model} has no version {version!r} (versions: {', '.join(self.versions()) or 'none'})") from None

    def read(self, version: str, name: str) -> bytes:
        self.manifest(version)  # invisible versions are not readable
        return self.store.read(self.key(version, name))

    def schema(self, version: str) -> Schema:
        from components.data import Schema

        return Schema.from_json(self.read(version, "schema.json"))

    def metrics(self, version: str) -> dict[str, Any]:
        return json.loads(self.read(version, "metrics.json"))

    def load_model(self, version: str) -> Any:
        import joblib

        return joblib.load(io.BytesIO(self.read(version, "model.joblib")))

    # --- champion ---------------------------------------------------------------------------
    @property
    def _pointer(self) -> str:
        return f"{self.root}/champion.json"

    def champion(self) -> Champion | None:
        try:
            v = self.store.read_versioned(self._pointer)
        except NotFound:
            return None
        return Champion(**json.loads(v.data), etag=v.etag)

    def promote(self, version: str, reason: str, expected: str | None | object = ...) -> Champion:
        """Make ``version`` the champion.

        ``expected`` is the champion the caller's decision was made against; if another
        promotion got there first, PromotionConflict is raised rather than overwriting it.
        Without ``expected`` the promotion applies on top of whatever is current.
        """
        self.manifest(version)
        for _ in range(20):
            current = self.champion()
            cur_version = current.version if current else None
            if expected is not ... and cur_version != expected:
                raise PromotionConflict(
                    f"champion of {self.model} changed to {cur_version} while {version} was evaluated against {expected}"
                )
            new = Champion(version, cur_version, utcnow(), reason)
            body = {k: v for k, v in asdict(new).items() if k != "etag"}
            if self.store.replace(self._pointer, json.dumps(body, indent=2).encode(), current.etag if current else None):
                self.store.write(f"{self.root}/history/{_stamp()}-{version}.json", json.dumps(body).encode())
                return new
        raise RegistryError(f"could not promote {version}: the champion pointer of {self.model} keeps changing")

    def rollback(self) -> Champion:
        """Serve the previous champion again."""
        current = self.champion()
        if current is None or current.previous is None:
            raise RegistryError(f"model {self.model} has no previous champion to roll back to")
        return self.promote(current.previous, f"rollback from {current.version}", expected=current.version)

    def history(self) -> list[dict[str, Any]]:
        out = []
        for k in self.store.list(f"{self.root}/history/"):
            try:
                out.append(json.loads(self.store.read(k)))
            except (NotFound, StoreError, ValueError):
                continue
        return out

    # --- decisions --------------------------------------------------------------------------
    def record_decision(self, version: str, decision: dict[str, Any]) -> None:
        self.store.write(f"{self.root}/decisions/{version}.json", json.dumps(decision, indent=2, default=str).encode())

    def decision(self, version: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.read(f"{self.root}/decisions/{version}.json"))
        except NotFound:
            return None


def _version_number(v: str) -> int:
    m = _VERSION.match(v)
    return int(m.group(1)) if m else -1


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
