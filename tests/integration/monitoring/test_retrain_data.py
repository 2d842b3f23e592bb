"""The data a retrain reads: the champion's source plus new Parquet parts of labelled production rows.

Given a trips CSV whose date-times are text, a champion whose schema the real ingest inferred
from it, and records the serving log wrote (date-times logged as timestamps) with their
feedback labels, when a retrain's data step runs, then it adds one part holding only the new
labelled rows (never a copy of the base, whose rows it never reads), each production row at
most once over a chain of retrains, and ingest reads base and parts as one table whose
date-time columns hold one type.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.data import REQUEST_ID, TIME, DataError, DatasetSpec, conform, load, normalise
from components.ingest import ingest
from components.registry import Registry
from components.runtime import spec_of
from components.settings import Settings
from components.split import split
from components.store import Store, open_store, read_parquet, write_parquet
from pipelines.triggers import retrain_spec
from services.monitoring import feedback
from testkit.production import TEXT, log_served, register_champion, retrain_request, trips

BASE = "datasets/trips/trips.csv"
BASE_ROWS = 1200


@pytest.fixture
def world(settings: Settings, tmp_path: Path):
    """A store with the trips CSV and a champion whose schema ingest inferred from it."""
    store = open_store(settings.store, settings)
    store.write(BASE, trips(BASE_ROWS, seed=1).to_csv(index=False).encode())
    spec = DatasetSpec(BASE, "fare", timestamp="pickup", name="test")
    schema = ingest(spec, settings).schema
    assert schema.column("dropoff").kind == "datetime"  # text in the file, a date-time to the model
    version = register_champion(store, "test", schema, spec)
    return store, spec, schema, version, tmp_path / "spill"


def serve(world, n: int, seed: int, share: float = 0.6) -> pd.DataFrame:
    store, _, schema, version, spill = world
    frame = trips(n, seed=seed, start="2026-03-01", days=7, other_region=True)
    logged = log_served(store, "test", version, schema, frame, spill, label_share=share, seed=seed)
    return pd.concat([logged, frame.reset_index(drop=True)], axis=1)


def snapshot(store: Store) -> dict[str, str]:
    return {k: hashlib.sha256(store.read(k)).hexdigest() for k in store.list("")}


def test_a_text_date_time_in_the_base_and_a_logged_timestamp_are_one_column(settings: Settings, world) -> None:
    store, spec, _, version, _ = world
    served = serve(world, 500, seed=2)

    out = retrain_spec(spec, settings, retrain_request("test", version), include_feedback=True)
    frame, _ = load(out, settings)

    labelled = served[served["labelled"]]
    assert len(frame) == BASE_ROWS + len(labelled)
    for col in ("pickup", "dropoff"):
        assert pd.api.types.is_datetime64_any_dtype(frame[col]) and frame[col].notna().all(), col
    production = frame[frame[REQUEST_ID].notna()].set_index(REQUEST_ID)
    expected = pd.to_datetime(labelled.set_index(REQUEST_ID)["dropoff"], format=TEXT)
    assert (production.loc[expected.index, "dropoff"] == expected).all()
    # production rows carry their prediction time as the timestamp
    logged_at = labelled.set_index(REQUEST_ID)[TIME].dt.tz_convert("UTC").dt.tz_localize(None)
    assert (production.loc[logged_at.index, "pickup"] == logged_at).all()


def test_the_store_grows_by_the_new_labelled_rows_only(settings: Settings, world) -> None:
    store, spec, _, version, _ = world
    served = serve(world, 500, seed=2)
    before = snapshot(store)

    out = retrain_spec(spec, settings, retrain_request("test", version), include_feedback=True)

    after = snapshot(store)
    added = sorted(set(after) - set(before))
    assert added == [f"datasets/test-feedback/{retrain_request('test', version).run_name}.parquet"]
    assert {k: after[k] for k in before} == before  # nothing rewritten, the base included
    assert out.source == BASE and out.additions == tuple(added) and REQUEST_ID in out.id_columns
    part = read_parquet(store, added[0])
    assert sorted(part[REQUEST_ID]) == sorted(served.loc[served["labelled"], REQUEST_ID])
    assert list(part.columns) == [REQUEST_ID, "pickup", "dropoff", "distance", "passengers", "zone", "fare"]


def test_the_data_step_reads_no_base_row(settings: Settings, world) -> None:
    """A base no reader could parse: the step still builds the retrain's data (it never opens it)."""
    store, spec, _, version, _ = world
    served = serve(world, 300, seed=3)
    store.write(BASE, b"\x00\x01 not a CSV file \xff" * 1000)

    out = retrain_spec(spec, settings, retrain_request("test", version), include_feedback=True)

    assert len(read_parquet(store, out.additions[0])) == served["labelled"].sum()


def test_a_chain_of_retrains_adds_each_production_row_once(settings: Settings, world) -> None:
    store, spec, schema, version, _ = world
    first = serve(world, 400, seed=4)
    spec1 = retrain_spec(spec, settings, retrain_request("test", version, "20261205T100000Z"), True)
    # the retrain's version records the spec it trained on, as the pipeline's fingerprint step does
    v2 = register_champion(store, "test", schema, spec1)
    store.write(BASE, b"unreadable")  # the chain never reads the base either
    second = serve(world, 400, seed=5)
    spec2 = retrain_spec(spec_of(Registry(store, "test").manifest(v2)["dataset"]), settings,
                         retrain_request("test", v2, "20261205T110000Z"), True)

    assert spec2.source == BASE and spec2.additions[0] == spec1.additions[0] and len(spec2.additions) == 2
    assert spec2.id_columns.count(REQUEST_ID) == 1
    parts = [read_parquet(store, k)[REQUEST_ID] for k in spec2.additions]
    assert set(parts[0]).isdisjoint(parts[1])
    both = pd.concat([first, second])
    assert sorted(pd.concat(parts)) == sorted(both.loc[both["labelled"], REQUEST_ID])


def test_a_long_chain_folds_its_parts_into_one(settings: Settings, world, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feedback, "MAX_PARTS", 2)
    store, spec, schema, version, _ = world
    served = []
    for i, key in enumerate(["20261205T100000Z", "20261205T110000Z", "20261205T120000Z"]):
        served.append(serve(world, 200, seed=10 + i))
        spec = retrain_spec(spec, settings, retrain_request("test", version, key), True)
    assert len(spec.additions) == 1  # the third retrain found two parts: it folded them with its rows
    rows = read_parquet(store, spec.additions[0])[REQUEST_ID]
    everything = pd.concat(served)
    assert rows.is_unique and sorted(rows) == sorted(everything.loc[everything["labelled"], REQUEST_ID])


def test_a_time_aware_split_puts_production_rows_by_their_time(settings: Settings, world) -> None:
    store, spec, _, version, _ = world
    serve(world, 500, seed=6, share=1.0)  # more production rows than the holdout takes
    out = retrain_spec(spec, settings, retrain_request("test", version), True)
    frame, _ = load(out, settings)
    train, holdout = split(frame, type("S", (), {"target": "fare", "timestamp": "pickup", "task": "regression"})(),
                           0.2, seed=0)
    # production rows are the newest: they fill the holdout first and the rest are trained on
    production = frame[REQUEST_ID].notna().sum()
    assert holdout[REQUEST_ID].notna().all() and train[REQUEST_ID].notna().sum() == production - len(holdout)
    assert np.all(train["pickup"].to_numpy() <= holdout["pickup"].min())


def test_a_part_without_the_target_fails_ingest_naming_it(settings: Settings, world) -> None:
    store, spec, _, _, _ = world
    write_parquet(store, "datasets/test-feedback/broken.parquet", pd.DataFrame({REQUEST_ID: ["a"], "distance": [1.0]}))
    with pytest.raises(DataError, match=r"datasets/test-feedback/broken.parquet has no column 'fare'"):
        load(replace(spec, additions=("datasets/test-feedback/broken.parquet",), id_columns=(REQUEST_ID,)), settings)


# --- the rule itself: added rows take the source's column types ----------------------------------

STAMPS = pd.Series(pd.to_datetime(["2026-03-01 10:00:00", None, "2026-03-02 11:30:15"]))


@pytest.mark.parametrize(("base", "added", "expected", "kind"), [
    # text date-times in the source, timestamps (naive UTC, or UTC) in the log: ISO text, parsed alike
    (pd.Series(["2026-01-05 08:00:00"] * 3, dtype=object), STAMPS,
     ["2026-03-01T10:00:00", None, "2026-03-02T11:30:15"], "datetime"),
    (pd.Series(["2026-01-05"] * 3, dtype=object), STAMPS.dt.tz_localize("UTC"),
     ["2026-03-01T10:00:00", None, "2026-03-02T11:30:15"], "datetime"),
    # timestamps in the source, text in the part
    (STAMPS, pd.Series(["2026-03-01T10:00:00Z", None, "junk"]), [pd.Timestamp("2026-03-01 10:00"), pd.NaT, pd.NaT],
     "datetime"),
    # true/false text in the source, the log's 1.0/0.0
    (pd.Series(["true", "false", "TRUE"], dtype=object), pd.Series([1.0, np.nan, 0.0]), ["true", None, "false"], "boolean"),
    (pd.Series([True, False, True]), pd.Series([1.0, np.nan, 0.0]), [True, None, False], "boolean"),
    # categories as text, whole numbers logged as numbers
    (pd.Series(["1", "2", "x"], dtype=object), pd.Series([3.0, np.nan, 4.5]), ["3", None, "4.5"], "other"),
    (pd.Series([1, 2, 3]), pd.Series([2.0, np.nan, 4.0]), [2.0, np.nan, 4.0], "other"),
])
def test_added_rows_take_the_source_column_types(base: pd.Series, added: pd.Series, expected: list, kind: str) -> None:
    like = pd.DataFrame({"c": base, "y": [0, 1, 0], "only_in_base": ["a", "b", "c"], "number": [1, 2, 3],
                         "stamp": STAMPS})
    part = pd.DataFrame({REQUEST_ID: ["r1", "r2", "r3"], "c": added, "y": [1, 0, 1], "only_in_part": [1, 2, 3]})

    out = conform(part, like, "y", "part.parquet")

    assert list(out.columns) == ["c", "y", "only_in_base", "number", "stamp", REQUEST_ID]
    assert out[["only_in_base", "number", "stamp"]].isna().all().all() and list(out["y"]) == [1, 0, 1]
    got = out["c"].tolist()
    assert [None if pd.isna(v) else v for v in got] == [None if pd.isna(v) else v for v in expected]
    combined = normalise(pd.concat([like, out], ignore_index=True), DatasetSpec("m", "y"))
    # a column the part lacks keeps its kind
    assert combined["number"].dtype == "float64" and pd.api.types.is_datetime64_any_dtype(combined["stamp"])
    # one column of one type: date-times stay date-times, true/false stays a boolean column
    assert pd.api.types.is_datetime64_any_dtype(combined["c"]) is (kind == "datetime")
    assert (combined.attrs.get("boolean_columns") == ["c"]) is (kind == "boolean")


def test_a_source_that_holds_production_rows_already_gets_each_once(settings: Settings, world) -> None:
    """A champion trained on a combined file of the earlier layout (base + production rows with
    their request ids): ingest reads a production row the parts repeat once."""
    store, spec, _, version, _ = world
    served = serve(world, 300, seed=7, share=1.0)
    out = retrain_spec(spec, settings, retrain_request("test", version), True)
    part = read_parquet(store, out.additions[0])
    base = pd.read_csv(io.BytesIO(store.read(BASE)))
    old_layout = pd.concat([base, conform(part.iloc[:100], base, "fare", "part")], ignore_index=True)
    write_parquet(store, "datasets/test-retrain/earlier.parquet", old_layout)

    frame, _ = load(replace(out, source="datasets/test-retrain/earlier.parquet"), settings)

    assert len(frame) == BASE_ROWS + len(served) and frame[REQUEST_ID].dropna().is_unique
