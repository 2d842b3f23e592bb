"""Distributed refit: 2 workers over XGBoost's collective protocol against one process, on the same rows.

The same churn-like training rows (Parquet, 1M-row groups as pandas writes them) and the same
XGBoost candidate (the project's preprocessing, 100 rounds of depth 6) are refit three ways:

* ``in-process``: today's refit step, the pipeline fit on the whole frame in one process;
* ``xgboost-collective-local`` with 1 worker: the distributed code path as one process (streaming its rows);
* ``xgboost-collective-local`` with 2 workers: two local processes under XGBoost's tracker.

Each model is scored on the same holdout (ROC AUC and balanced accuracy); each process's peak
memory is its ``VmHWM`` (/proc/<pid>/status, read by the process itself at its end). Targets:
the 2-worker score within 0.005 of the one-process refit, each worker's peak at most 60% of
the one-process refit's.

``measure(rows)`` returns the rows of the table; ``python -m benchmarks.scale_distributed [out.json]``
prints them (rows from BENCH_DISTRIBUTED_ROWS, default 200000; the issue's figure: 5000000).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHUNK = 250_000
PARAMS = {"n_estimators": 100, "max_depth": 6, "learning_rate": 0.1, "tree_method": "hist", "n_jobs": 1}
SCORE_TARGET = 0.005
MEMORY_TARGET = 0.60

IN_PROCESS = r"""
import json, sys, time
import joblib, pandas as pd, xgboost as xgb
from components.data import Schema
from components.proc import peak_rss_kib
from components.features import build, xy
schema = Schema.from_json(open(sys.argv[1]).read())
t0 = time.perf_counter()
train = pd.read_parquet(sys.argv[2], columns=[*schema.feature_names, schema.target])
X, y = xy(train, schema)
model = build(schema, xgb.XGBClassifier(**json.loads(sys.argv[4])), False, 0).fit(X, y.map({c: i for i, c in enumerate(schema.classes)}))
seconds = time.perf_counter() - t0
joblib.dump(model, sys.argv[3])
peak = peak_rss_kib()
print(json.dumps({"seconds": round(seconds, 1), "peak_rss_kib": peak}))
"""


def _write_data(root: Path, rows: int, seed: int) -> tuple[Path, Path, Any]:
    """Training and holdout Parquet files of ``rows`` + 20% churn rows, written chunk by chunk; returns them and the schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.data import DatasetSpec, infer_schema, normalise
    from components.synthetic import churn

    spec = DatasetSpec("bench", "churned", task="classification", timestamp="event_time", id_columns=("customer_id",))
    train, holdout = root / "train.parquet", root / "holdout.parquet"
    schema, writer, left = None, None, rows
    for i in range(-(-rows // CHUNK)):
        n = min(CHUNK, left)
        frame = normalise(churn(n, seed=seed + i), spec)
        schema = schema or infer_schema(frame, spec)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        writer = writer or pq.ParquetWriter(train, table.schema)
        writer.write_table(table, row_group_size=1_000_000)
        left -= n
    writer.close()
    normalise(churn(max(rows // 5, 2000), seed=seed + 10_000), spec).to_parquet(holdout, index=False)
    return train, holdout, schema


def _score(model: Any, holdout: Path, schema: Any) -> dict[str, float]:
    import numpy as np
    import pandas as pd
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from components.features import xy

    X, y = xy(pd.read_parquet(holdout), schema)
    positive = (y == schema.classes[1]).to_numpy()
    proba = model.predict_proba(X)[:, 1]
    return {"roc_auc": round(float(roc_auc_score(positive, proba)), 4),
            "balanced_accuracy": round(float(balanced_accuracy_score(positive, proba > 0.5)), 4),
            "max_abs_proba": float(np.max(np.abs(proba)))}


def measure(rows: int = 200_000, workers: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """Refit the same rows in one process, as 1 worker and as ``workers`` workers; one dict per run."""
    import joblib
    import xgboost as xgb

    from components import distributed_xgb as dx
    from components.features import build
    from components.settings import load_settings, process_environment

    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-dist-") as tmp:
        root = Path(tmp)
        train, holdout, schema = _write_data(root, rows, seed)
        (root / "schema.json").write_text(schema.to_json())
        proc = subprocess.run([sys.executable, "-c", IN_PROCESS, str(root / "schema.json"), str(train),
                               str(root / "model.joblib"), json.dumps(PARAMS)],
                              capture_output=True, text=True, check=True)
        single = json.loads(proc.stdout.strip().splitlines()[-1])
        out.append({"engine": "in-process", "workers": 1, "rows": rows, "seconds": single["seconds"],
                    "peak_rss_mib": [round(single["peak_rss_kib"] / 1024)],
                    **_score(joblib.load(root / "model.joblib"), holdout, schema)})
        template = build(schema, xgb.XGBClassifier(**PARAMS), False, 0)
        for n in (1, workers):
            settings = load_settings(store=str(root / "store"), model="bench", train_workers=n,
                                     pipeline_root=str(root / "root"))
            t0 = time.perf_counter()
            model, outcome, _ = dx.distributed_refit(template, [str(train)], schema, settings, f"bench-{n}",
                                                     process_environment())
            out.append({"engine": outcome.engine, "workers": n, "rows": rows,
                        "seconds": round(time.perf_counter() - t0, 1),
                        "peak_rss_mib": [round(w["peak_rss_kib"] / 1024) for w in outcome.workers],
                        **_score(model, holdout, schema)})
    return out


def rows(figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, target) lines for `make bench`'s table."""
    runs = figures["runs"]
    single, distributed = runs[0], runs[-1]
    worst = max(distributed["peak_rss_mib"])
    lines = [(f"{r['engine']} x{r['workers']}, {r['rows']:,} rows",
              f"AUC {r['roc_auc']}, bal. acc. {r['balanced_accuracy']}, peak {r['peak_rss_mib']} MiB, {r['seconds']} s", "")
             for r in runs]
    lines.append((f"{distributed['workers']} workers vs one process: |AUC difference|",
                  f"{abs(distributed['roc_auc'] - single['roc_auc']):.4f}", f"<= {SCORE_TARGET}"))
    lines.append((f"{distributed['workers']} workers vs one process: worst worker's peak / one process's",
                  f"{worst / single['peak_rss_mib'][0]:.2f}", f"<= {MEMORY_TARGET}"))
    return lines


def main(out_json: str | None = None) -> dict[str, Any]:
    """Run at BENCH_DISTRIBUTED_ROWS rows (default 200000); write the figures to ``out_json``."""
    n = int(os.environ.get("BENCH_DISTRIBUTED_ROWS", "200000"))
    figures = {"runs": measure(n)}
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    result = main(sys.argv[1] if len(sys.argv) > 1 else None)
    for figure, value, target in rows(result):
        print(f"{figure:70s} {value:60s} {target}")
