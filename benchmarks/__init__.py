"""Flywheel's benchmarks: one module per `make bench` section (benchmarks/__main__.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def save(out_json: str | os.PathLike[str] | None, figures: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """Write a section's figures to ``out_json`` as JSON when it is given; returns them.

    ``default`` is ``json.dumps``'s: how a value JSON has no type for is written (none: it is an error).
    """
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(figures, indent=2, default=default))
    return figures
