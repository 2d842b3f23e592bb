"""The scale-out refit: XGBoost's collective protocol over real local worker processes and XGBoost's tracker.

Given small churn data written as Parquet with several row groups, when the refit runs with two
workers, then the workers each read their own share, the model equals in quality the one-process
refit, and a worker that dies fails the refit with one sentence naming its rank; nothing is left
in the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from components import distributed_xgb as dx
from components import refit
from components.data import DatasetSpec, infer_schema, normalise
from components.features import build, xy
from components.settings import ConfigError, Settings
from components.store import open_store
from components.synthetic import churn

SPEC = DatasetSpec("churn", "churned", task="classification", timestamp="event_time", id_columns=("customer_id",))


def _data(tmp_path: Path, rows: int = 3000) -> tuple[list[str], pd.DataFrame, object]:
    frame = normalise(churn(rows + 600, seed=3), SPEC)
    schema = infer_schema(frame, SPEC)
    train, holdout = frame.iloc[:rows], frame.iloc[rows:]
    path = tmp_path / "train.parquet"
    train.to_parquet(path, index=False, row_group_size=700)  # 5 row groups: shares cut through one
    return [str(path)], holdout, schema


def _template(schema: object) -> object:
    return build(schema, xgb.XGBClassifier(n_estimators=30, max_depth=4, learning_rate=0.2, n_jobs=1), False, 0)


def test_plan_shares_cover_every_row_once() -> None:
    shares = dx.plan_shares([("a", [700, 700, 700]), ("b", [500])], 3)
    assert [sum(p.stop - p.start for p in s) for s in shares] == [866, 867, 867]
    covered = sorted((p.file, p.row_group, r) for s in shares for p in s for r in range(p.start, p.stop))
    assert covered == sorted(("a", g, r) for g in range(3) for r in range(700)) + [("b", 0, r) for r in range(500)]
    with pytest.raises(ValueError, match="2 training rows cannot be shared among 3 workers"):
        dx.plan_shares([("a", [2])], 3)


def test_two_workers_train_one_model_as_good_as_one_process(tmp_path: Path, settings: Settings) -> None:
    files, holdout, schema = _data(tmp_path)
    template = _template(schema)
    scores, records = {}, {}
    for workers in (1, 2):
        s = settings.model_copy(update={"train_workers": workers})
        model, outcome, _ = dx.distributed_refit(template, files, schema, s, f"job-{workers}")
        X, y = xy(holdout, schema)
        scores[workers] = float(np.mean(model.predict(X) == y.to_numpy()))
        records[workers] = outcome.workers
    assert [r["rows"] for r in records[2]] == [1500, 1500]  # each worker read its own half
    assert all(r["peak_rss_kib"] > 0 for r in records[2])
    assert scores[1] > 0.6
    assert abs(scores[2] - scores[1]) <= 0.02
    assert open_store(settings.store, settings).list("training") == []  # the job's objects are gone


def test_a_worker_that_dies_fails_the_refit_naming_its_rank(tmp_path: Path, settings: Settings) -> None:
    files, _, schema = _data(tmp_path, rows=1200)
    s = settings.model_copy(update={"train_workers": 2})
    job, _, _ = dx.prepare(_template(schema), files, schema, s, 2, "job-dies", 1000)
    store = open_store(s.store, s)
    # rank 1's share names a file that does not exist: the worker fails while the other waits in the collective
    broken = [job.shares[0], [dx.Piece(str(tmp_path / "gone.parquet"), 0, 0, 600)]]
    job = dx.Job(**{**job.__dict__, "shares": broken})
    store.write(job.key("job.json"), job.to_json().encode())
    with pytest.raises(dx.TrainingFailed, match=r"^distributed training worker rank 1 \(pid \d+\) of job "
                                                r"training/test/job-dies exited with code 1: .*gone\.parquet"):
        dx.run_local(job, s, 120, _env())
    assert not store.exists(job.key("model.ubj"))  # nothing half-trained


def _env() -> dict[str, str]:
    from components.settings import process_environment

    return dict(process_environment())


def test_worker_refuses_missing_dmlc_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from components.settings import collective_env

    for name in ("DMLC_TRACKER_URI", "DMLC_TRACKER_PORT", "DMLC_TASK_ID", "DMLC_NUM_WORKER"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="DMLC_TRACKER_URI is not set"):
        collective_env()
    monkeypatch.setenv("DMLC_TRACKER_URI", "10.0.0.1")
    monkeypatch.setenv("DMLC_TRACKER_PORT", "9999")
    monkeypatch.setenv("DMLC_TASK_ID", "2")
    monkeypatch.setenv("DMLC_NUM_WORKER", "2")
    with pytest.raises(ConfigError, match="DMLC_TASK_ID 2 is not a rank of DMLC_NUM_WORKER 2 workers"):
        collective_env()
    monkeypatch.setenv("DMLC_TASK_ID", "1")
    assert collective_env() == (1, 2, {"dmlc_tracker_uri": "10.0.0.1", "dmlc_tracker_port": 9999, "dmlc_task_id": "1"})


def test_job_round_trips_through_json(tmp_path: Path) -> None:
    job = dx.Job("file:///s", "training/m/j", [[dx.Piece("a", 0, 0, 5)]], ["x"], "y", [0, 1], {"eta": 0.1}, 10)
    assert dx.Job.from_json(job.to_json()) == job
    assert json.loads(job.to_json())["shares"][0][0] == {"file": "a", "row_group": 0, "start": 0, "stop": 5}


# --- the refit step: refit.refit_and_package, then register --------------------------------


@pytest.fixture
def xgboost_candidate() -> dict:
    """The search's XGBoost candidate (components/train.py), as the refit step receives it."""
    from components import train

    return next(c for c in train.candidates("classification") if c["family"] == "xgboost")


def _split(tmp_path: Path) -> tuple[str, str, pd.DataFrame, object]:
    files, holdout, schema = _data(tmp_path)
    path = tmp_path / "holdout.parquet"
    holdout.to_parquet(path, index=False)
    return files[0], str(path), holdout, schema


def test_the_refit_step_trains_with_two_workers_and_the_manifest_says_so(tmp_path: Path, settings: Settings,
                                                                        xgboost_candidate: dict) -> None:
    from components import evaluate, refit, register, train
    from components.registry import Registry

    train_path, holdout_path, holdout, schema = _split(tmp_path)
    s = settings.model_copy(update={"train_workers": 2})
    made, training = refit.refit_and_package(train_path, holdout_path, schema, xgboost_candidate, s, "flywheel-refit-1")
    assert training["engine"] == dx.ENGINE_LOCAL and training["workers"] == 2
    model = __import__("joblib").load(__import__("io").BytesIO(made.model))
    ev = evaluate.evaluate(model, None, holdout, schema)
    best = {"candidate": xgboost_candidate, "metric": "balanced_accuracy", "score": 0.7, "std": 0.0, "rows": 3000,
            "training": training}
    reg = Registry(open_store(s.store, s), s.model)
    decision = register.register(reg, made, schema, ev, best, "fp-1", "run-1", None, s)
    manifest = reg.manifest(decision.version)
    assert manifest["training"]["engine"] == "xgboost-collective-local"
    assert manifest["training"]["workers"] == 2
    # a family that is not XGBoost refits in the step whatever train_workers says
    _, in_process = refit.refit_and_package(train_path, holdout_path, schema, train.candidates("classification")[0],
                                            s, "flywheel-refit-2")
    assert (in_process["engine"], in_process["workers"], in_process["refit"]["mode"]) == ("in-process", 1, "in-memory")


def test_a_refit_whose_workers_die_registers_nothing_and_leaves_no_job(tmp_path: Path, settings: Settings,
                                                                       xgboost_candidate: dict,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:

    train_path, holdout_path, _, schema = _split(tmp_path)
    s = settings.model_copy(update={"train_workers": 2})
    # every worker gets parameters XGBoost refuses once training starts: the workers exit with an error
    monkeypatch.setattr(dx, "booster_params", lambda est, classes: ({"objective": "binary:logistic", "max_depth": -1},
                                                                     5, False))
    with pytest.raises(dx.TrainingFailed, match=r"^distributed training worker rank [01] \(pid \d+\) of job "
                                                r"training/test/flywheel-refit-x exited with code 1: .*max_depth"):
        refit.refit_and_package(train_path, holdout_path, schema, xgboost_candidate, s, "flywheel-refit-x")
    store = open_store(s.store, s)
    assert store.list("training") == [] and store.list("registry") == []


def test_balanced_weights_are_scikit_learns_over_every_file(tmp_path: Path) -> None:
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array(["no"] * 70 + ["yes"] * 20 + ["maybe"] * 10)
    for i, part in enumerate((y[:40], y[40:])):
        pd.DataFrame({"t": part}).to_parquet(tmp_path / f"{i}.parquet", index=False)
    classes = ["maybe", "no", "yes"]
    weights = dx.balanced_weights([str(tmp_path / "0.parquet"), str(tmp_path / "1.parquet")], "t", classes)
    np.testing.assert_allclose(weights, compute_class_weight("balanced", classes=np.array(classes), y=y))


def test_balanced_classes_reach_every_worker_and_the_labels_the_model(tmp_path: Path, settings: Settings) -> None:
    files, holdout, schema = _data(tmp_path, rows=3000)
    train = pd.read_parquet(files[0])
    rare = train[(train["churned"] == 0) | (np.arange(len(train)) % 6 == 0)]  # churners made rare: about 1 in 8
    rare.to_parquet(files[0], index=False, row_group_size=500)
    s = settings.model_copy(update={"train_workers": 2})
    plain, _, _ = dx.distributed_refit(_template(schema), files, schema, s, "job-plain")
    balanced, _, _ = dx.distributed_refit(_template(schema), files, schema, s, "job-balanced", balanced_classes=True)
    X = holdout[schema.feature_names]
    # weighting the rarer class up raises its predicted share
    assert balanced.predict_proba(X)[:, 1].mean() > plain.predict_proba(X)[:, 1].mean() + 0.15
    assert list(balanced.steps[-1][1].labels_) == schema.classes


def test_a_workers_failure_is_named_by_its_error_not_the_native_stack_trace_after_it() -> None:
    import tempfile

    with tempfile.TemporaryFile() as log:  # what a worker prints when XGBoost's C++ core refuses a parameter
        log.write(b"Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                  b"xgboost.core.XGBoostError: [20:30:00] param.h: Check failed: max_depth >= 0\n"
                  b"Stack trace:\n  [bt] (0) /lib/libxgboost.so(+0x1)\n  [bt] (8) /lib/_ctypes.so(+0xbd9e) [0x7f]\n")
        assert dx._tail(log) == "xgboost.core.XGBoostError: [20:30:00] param.h: Check failed: max_depth >= 0"


# --- a worker's memory: its share, plus a fixed cost kept small -----------------------------------


def _native(schema: object, rounds: int = 30) -> object:
    """The search's XGBoost model (native preprocessing, balanced classes), as the refit step refits it."""
    from components import train

    candidate = next(c for c in train.candidates("classification") if c["family"] == "xgboost")
    return train.make_model(schema, {**candidate, "params": {**candidate["params"], "n_estimators": rounds}}, 0)


def test_arrow_features_are_what_the_fitted_native_preprocessing_gives_xgboost(tmp_path: Path) -> None:
    import pyarrow as pa

    frame = normalise(churn(2000, seed=5), SPEC)
    schema = infer_schema(frame, SPEC)
    frame.loc[::7, "plan"] = None  # missing categories, numbers and dates; a level the schema never saw
    frame.loc[::11, "age"] = np.nan
    frame.loc[::13, "signup_date"] = pd.NaT
    frame.loc[::17, "region"] = "atlantis"
    prep = _native(schema)[:-1].fit(frame[schema.feature_names])
    ops = dx.native_ops(prep)
    assert ops is not None and [op[0] for op in ops].count("date") == 1
    table = pa.Table.from_pandas(frame, preserve_index=False)
    expected = np.asarray(prep.transform(frame[schema.feature_names]), dtype="float32")
    got = dx.arrow_features(table.combine_chunks().to_batches()[0], ops)
    np.testing.assert_array_equal(got, expected)  # NaN where NaN
    assert np.isnan(got).any()
    assert dx.checked_native_ops(prep, table, frame) == ops


def test_a_preprocessing_arrow_does_not_reproduce_goes_to_the_workers_pickled(tmp_path: Path) -> None:
    import pyarrow as pa

    frame = normalise(churn(500, seed=5), SPEC)
    schema = infer_schema(frame, SPEC)
    prep = _native(schema)[:-1].fit(frame[schema.feature_names])
    as_text = frame.assign(signup_date=frame["signup_date"].dt.strftime("%Y-%m-%d"))  # a CSV's dates, as text
    assert dx.checked_native_ops(prep, pa.Table.from_pandas(as_text, preserve_index=False), as_text) is None
    assert dx.native_ops(_template(schema)[:-1].fit(*xy(frame, schema))) is None  # one-hot, scaling: not native


def _peaks(tmp_path: Path, settings: Settings, rows: int) -> dict[int, int]:
    """The worst worker's peak memory (KiB) refitting the native XGBoost model on ``rows`` rows (25k-row groups)
    with 1 worker and with 2."""
    frame = normalise(churn(rows, seed=9), SPEC)
    schema = infer_schema(frame, SPEC)
    path = tmp_path / f"train-{rows}.parquet"
    frame.to_parquet(path, index=False, row_group_size=25_000)
    del frame
    peaks = {}
    for workers in (1, 2):
        s = settings.model_copy(update={"train_workers": workers})
        _, outcome, _ = dx.distributed_refit(_native(schema, rounds=2), [str(path)], schema, s, f"mem-{rows}-{workers}",
                                             balanced_classes=True)
        assert [w["rows"] for w in outcome.workers] == [rows // workers] * workers
        peaks[workers] = max(w["peak_rss_kib"] for w in outcome.workers)
    return peaks


# What one worker holds beside its share: the interpreter with XGBoost and Arrow imported (no pandas
# or scikit-learn: ``import_xgboost``), Parquet's reader and one batch. Measured on the churn table:
# 172-180 MiB.
WORKER_BASE_MB = 210


def test_two_workers_each_hold_half_the_data_and_a_small_fixed_cost(tmp_path: Path, settings: Settings) -> None:
    small, big = _peaks(tmp_path, settings, 50_000), _peaks(tmp_path, settings, 450_000)
    # the fixed cost (interpreter, XGBoost, Arrow, one batch) stays small
    assert max(small.values()) * 1024 <= WORKER_BASE_MB * 1_000_000, (small, big)
    # what the rows add divides between the workers (half of it each; all of it each, were it not split):
    # the fixed cost cancels between the two sizes. Measured 0.46; 0.75 leaves room for what the
    # allocators keep, which varied by a few MiB from run to run on a loaded machine.
    assert big[2] - small[2] <= 0.75 * (big[1] - small[1]), (small, big)
