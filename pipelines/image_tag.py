"""The immutable tag of Flywheel's images: the project version plus a hash of what they are built from.

KFP's cache key is the image string plus the command plus the inputs, so a tag that is
rebuilt in place (``:0.1.0``) lets a cached step answer for code it never ran. The tag
here changes whenever the build context changes: ``uv.lock``, ``pyproject.toml`` and every
file under ``components/``, ``services/`` and ``pipelines/`` (the Dockerfiles included).
``make images`` tags with it and ``flywheel compile`` compiles against it.

Standard library only, so ``k8s/images.sh`` runs it as a plain script:
``python3 pipelines/image_tag.py [repo root]`` prints the tag.
"""

from __future__ import annotations

import hashlib
import sys
import tomllib
from pathlib import Path

# The build context the Dockerfiles copy from (.dockerignore keeps the rest out).
SOURCES = ("pyproject.toml", "uv.lock", "README.md", "components", "services", "pipelines")
REGISTRY = "ghcr.io/flywheel"


def _files(root: Path) -> list[Path]:
    out: list[Path] = []
    for name in SOURCES:
        path = root / name
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out.extend(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def source_tag(root: str | Path) -> str:
    """``<version>-<12 hex digits>`` for the checkout at ``root``; raises FileNotFoundError without uv.lock."""
    root = Path(root)
    if not (root / "uv.lock").is_file():
        raise FileNotFoundError(f"{root} has no uv.lock: the image tag is derived from a checkout of the project")
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    digest = hashlib.sha256()
    for path in _files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return f"{version}-{digest.hexdigest()[:12]}"


def checkout_root() -> Path | None:
    """The project checkout this module runs from, or None when it is installed (as in the images)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "uv.lock").is_file() else None


def component_image(registry: str = REGISTRY) -> str | None:
    """``<registry>/flywheel-components:<source tag>`` of this checkout; None outside a checkout."""
    root = checkout_root()
    return f"{registry}/flywheel-components:{source_tag(root)}" if root else None


if __name__ == "__main__":
    print(source_tag(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]))
