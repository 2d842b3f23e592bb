"""Flywheel's benchmarks: one module per `make bench` section (benchmarks/__main__.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save(out_json: str | None, figures: Any) -> Any:
    """Write a section's figures to ``out_json`` as JSON when it is given; returns them."""
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(figures, indent=2))
    return figures
