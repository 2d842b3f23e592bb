"""Peak memory of the XGBoost refit in memory against external memory (issue 25.2).

    python -m benchmarks.refit_memory [ROWS] [in-memory|external ...]

Writes the project's churn table (ROWS rows, default 1,000,000) as a training Parquet file, then
refits the search's XGBoost candidate on it in a fresh process per mode and prints each
process's peak RSS (VmHWM from /proc) and the holdout's balanced accuracy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
import pandas as pd
from sklearn.metrics import balanced_accuracy_score
from components import refit, train
from components.proc import peak_rss_kib
from components.data import Schema
path, schema_json, holdout, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
schema = Schema.from_json(open(schema_json).read())
cand = next(c for c in train.candidates(schema.task) if c["family"] == "xgboost")
start = time.perf_counter()
model, _, plan = refit.refit(path, schema, cand, 0, budget)
seconds = time.perf_counter() - start
ho = pd.read_parquet(holdout)
score = balanced_accuracy_score(ho[schema.target], model.predict(ho[schema.feature_names]))
hwm = peak_rss_kib()
print(json.dumps({"mode": plan.describe()["mode"], "estimated_mb": plan.describe()["estimated_mb"],
                  "peak_rss_mb": round(hwm / 1024), "seconds": round(seconds, 1), "holdout_balanced_accuracy": round(score, 4)}))
"""


def main(rows: int = 1_000_000, modes: tuple[str, ...] = ("in-memory", "external")) -> None:
    from components.data import DatasetSpec, infer_schema, normalise
    from components.synthetic import churn

    work = Path(tempfile.mkdtemp(prefix="flywheel-refit-"))
    frame = churn(rows + rows // 4, seed=11)
    spec = DatasetSpec("churn", "churned", timestamp="event_time", id_columns=["customer_id"])
    frame = normalise(frame, spec)
    schema = infer_schema(frame.head(200_000), spec)
    frame.iloc[:rows].to_parquet(work / "train.parquet", index=False, row_group_size=100_000)
    frame.iloc[rows:].to_parquet(work / "holdout.parquet", index=False)
    (work / "schema.json").write_text(schema.to_json())
    del frame
    budgets = {"in-memory": 100_000, "external": 1}  # a budget it fits; one that forces external memory
    for budget in (budgets[m] for m in modes):
        out = subprocess.run([sys.executable, "-c", CHILD, str(work / "train.parquet"), str(work / "schema.json"),
                              str(work / "holdout.parquet"), str(budget)], capture_output=True, text=True, check=True)
        print(json.dumps({"rows": rows, **json.loads(out.stdout.strip().splitlines()[-1])}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000, tuple(sys.argv[2:]) or ("in-memory", "external"))
