"""The batch-scoring pipeline on kfp.local with a real registered model, and its compiled form."""

from __future__ import annotations

import pandas as pd
import yaml

from components import evaluate, ingest, register, split, train
from components.data import DatasetSpec, normalise
from components.package import package
from components.registry import Registry
from components.store import open_store
from components.synthetic import churn
from pipelines.batch import compile_batch, run_local


def test_batch_scoring_pipeline_scores_good_rows_and_reports_bad_ones(settings, tmp_path):
    data = tmp_path / "train.csv"
    churn(1200, seed=21).to_csv(data, index=False)
    ing = ingest.ingest(DatasetSpec(str(data), "churned"), settings)
    tr, ho = split.split(ing.frame, ing.schema, 0.2, 0)
    best = train.score_candidate(tr, ing.schema, train.candidates("classification")[0], 2, 0, 5000)
    model = train.refit(tr, ing.schema, best["candidate"], 0)
    reg = Registry(open_store(settings.store, settings), settings.model)
    register.register(reg, package(model, tr, ho, ing.schema, 0), ing.schema,
                      evaluate.evaluate(model, None, ho, ing.schema), best, ing.fingerprint, "t", None, settings)
    to_score = churn(300, seed=22).drop(columns=["churned"])
    to_score.loc[5, "age"] = "old"  # a bad row: reported, not scored
    src = tmp_path / "score.csv"
    to_score.to_csv(src, index=False)
    out = tmp_path / "scored.parquet"
    run_local(str(src), str(out), settings.store, settings.model, pipeline_root=str(tmp_path / "kfp"))
    scored = pd.read_parquet(out)
    assert len(scored) == 299
    clean = normalise(pd.read_csv(src).drop(index=5), DatasetSpec(str(src), "churned"))
    expected = model.predict(clean[ing.schema.feature_names])
    assert (scored["_prediction"].to_numpy() == expected).all()
    errors = pd.read_csv(tmp_path / "scored.errors.csv")
    assert len(errors) == 1 and "age" in errors.to_string()


def test_compiled_batch_pipeline(tmp_path):
    ir = yaml.safe_load(open(compile_batch(str(tmp_path / "b.yaml"))))
    assert ir["pipelineInfo"]["name"] == "flywheel-batch-scoring"
    task = ir["root"]["dag"]["tasks"]["batch-predict"]
    assert task["retryPolicy"]["maxRetryCount"] == 2 and task["cachingOptions"] == {}
