"""Ingest's peak memory grows with the rows by a small multiple of the data's Arrow size (components/data.py
``load_table``): the table is held once as Arrow, text stays Arrow text, one column at a time is pandas.

Measured as each run's peak RSS (VmHWM, components/proc.py) in a fresh child process at two sizes: the
difference per added row, against the Arrow size of a row. A frame-based ingest (every text column as
Python objects, normalised into new columns beside the old ones) took about 7 times the Arrow size per row
on this table; the Arrow ingest takes about 2.3 (the Parquet read's buffers beside the table).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
SIZES = (200_000, 400_000)
MAX_ARROW_MULTIPLE = 4.0

INGEST = r"""
import json, sys
import pandas, pyarrow.parquet, sklearn  # what every ingest imports: in the base, not in the growth
from components import ingest
from components.proc import peak_rss_kib
from components.settings import load_settings
from components.sources import DatasetSpec
settings = load_settings(store=sys.argv[2] + "/store", pipeline_root=sys.argv[2] + "/root")
before = peak_rss_kib()
result = ingest.ingest(DatasetSpec(sys.argv[1], "y"), settings)
print(json.dumps({"before_kib": before, "peak_kib": peak_rss_kib(), "rows": result.table.num_rows}))
"""


def _table(rows: int, path: Path) -> None:
    """16 short categorical text columns, a number and a label: the shape whose text a frame holds as objects."""
    rng = np.random.default_rng(0)
    columns = {f"t{k:02d}": rng.choice(np.array(list("abcdefghij")), rows) for k in range(16)}
    pd.DataFrame({**columns, "x": rng.normal(size=rows), "y": rng.integers(0, 2, rows)}).to_parquet(path, index=False)


def _peak_kib(path: Path, work: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", INGEST, str(path), str(work)], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ingest_peak_memory_per_row_is_a_small_multiple_of_the_arrow_size(tmp_path):
    runs = []
    for rows in SIZES:
        path = tmp_path / f"data-{rows}.parquet"
        _table(rows, path)
        runs.append(_peak_kib(path, tmp_path / f"work-{rows}"))
        assert runs[-1]["rows"] == rows
    arrow_per_row = pq.read_table(tmp_path / f"data-{SIZES[1]}.parquet").nbytes / SIZES[1]
    added = (runs[1]["peak_kib"] - runs[0]["peak_kib"]) * 1024 / (SIZES[1] - SIZES[0])
    assert added <= MAX_ARROW_MULTIPLE * arrow_per_row, (added, arrow_per_row, runs)
