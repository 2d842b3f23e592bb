"""Holdout score of every candidate of the search, the gradient-boosted families beside the others.

    python -m benchmarks.family_scores [TABLE ...]

On the project's tables (the churn generator, scikit-learn's
wine and diabetes data as the serving tests use them, the shop orders of the real-data tests):
each candidate is refit on the training rows of the pipeline's own split and scored on its
holdout with the search's primary metric (balanced accuracy, R2). One JSON line per table.
"""

from __future__ import annotations

import json
import sys
import warnings

import pandas as pd
from sklearn.metrics import balanced_accuracy_score, r2_score


def tables() -> dict[str, tuple[pd.DataFrame, dict]]:
    from sklearn.datasets import load_diabetes, load_wine

    from components.synthetic import churn

    wine = load_wine(as_frame=True).frame
    wine["target"] = wine["target"].map(lambda i: f"class_{i}")
    from testkit.models import shop_frame

    return {
        "churn-20k": (churn(20_000, seed=2), {"target": "churned", "timestamp": "event_time", "id_columns": ["customer_id"]}),
        "wine": (wine, {"target": "target"}),
        "diabetes": (load_diabetes(as_frame=True).frame, {"target": "target"}),
        "shop-5k": (shop_frame(5000, seed=4), {"target": "returned", "timestamp": "ordered_at", "id_columns": ["order_id"]}),
    }


def main(only: list[str]) -> None:
    from components import split, train
    from components.data import DatasetSpec, infer_schema, normalise

    warnings.simplefilter("ignore")
    for name, (frame, spec_args) in tables().items():
        if only and name not in only:
            continue
        spec = DatasetSpec(name, **spec_args)
        frame = normalise(frame, spec)
        schema = infer_schema(frame, spec)
        tr, ho = split.split(frame, schema, 0.2, 42)
        X, y = ho[schema.feature_names], ho[schema.target]
        metric = balanced_accuracy_score if schema.task == "classification" else r2_score
        scores = {c["id"]: round(float(metric(y, train.refit(tr, schema, c, 42).predict(X))), 4)
                  for c in train.candidates(schema.task)}
        print(json.dumps({"table": name, "rows": len(frame), "metric": train.PRIMARY[schema.task], "holdout": scores}),
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
