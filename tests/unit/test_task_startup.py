"""Time to first model: the search fans out by family, and tasks import only what they use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from components import train
from pipelines.local.runner import model_threads


def _imports_after(statement: str) -> set[str]:
    """Top-level packages a fresh interpreter holds after ``statement`` (what a task pays at start)."""
    code = f"import sys, json; {statement}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env={"_KFP_RUNTIME": "true", "PATH": ""})
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("statement", [
    "from components import train; train.families('classification')",  # the search-space task
    "from components import runtime, status; from components.registry import Registry",  # champion, deploy, record-run
    "from components import ingest, runtime, status",  # fingerprint: hashes the files, reads no rows
])
def test_tasks_that_move_no_data_start_without_pandas_or_sklearn(statement: str) -> None:
    loaded = _imports_after(statement)
    assert not loaded & {"pandas", "sklearn", "kubernetes"}, loaded & {"pandas", "sklearn", "kubernetes"}


def test_the_split_task_starts_without_sklearn() -> None:
    loaded = _imports_after("from components import runtime, split; from components.data import Schema")
    assert "pandas" in loaded  # the check sees what the task imports
    assert not loaded & {"sklearn", "scipy", "kubernetes"}, loaded & {"sklearn", "scipy", "kubernetes"}


def test_the_register_task_writes_the_package_without_sklearn() -> None:
    loaded = _imports_after("from components import register, runtime; from components.package import ModelPackage; "
                            "from components.data import Schema; from components.registry import Registry")
    assert "pandas" in loaded  # the check sees what the task imports
    assert not loaded & {"sklearn", "scipy", "joblib", "kubernetes"}, loaded & {"sklearn", "scipy", "joblib", "kubernetes"}


def test_the_search_fans_out_by_family_with_every_candidate_inside() -> None:
    for task in ("classification", "regression"):
        groups = train.families(task)
        names = [g["family"] for g in groups]
        assert len(names) == len(set(names)) == 5
        inside = [c["id"] for g in groups for c in g["candidates"]]
        assert inside == [c["id"] for c in train.candidates(task)]  # none lost, same order
        assert all(c["family"] == g["family"] for g in groups for c in g["candidates"])


def test_the_search_packs_into_the_tasks_a_runner_runs_at_once_costliest_first() -> None:
    for task in ("classification", "regression"):
        groups = train.families(task, tasks=2)
        assert len(groups) == 2
        inside = sorted(c["id"] for g in groups for c in g["candidates"])
        assert inside == sorted(c["id"] for c in train.candidates(task))  # none lost, none twice
        costs = [sum(train.FAMILIES[c["family"]].cost for c in g["candidates"]) for g in groups]
        assert costs == sorted(costs, reverse=True)  # the costliest starts first
        assert costs[0] - costs[1] <= max(f.cost for f in train.FAMILIES.values())  # balanced to within one family
        assert "hist_gradient_boosting" in groups[0]["family"]  # the costliest family starts first
    assert train.families("classification", tasks=len(train.FAMILIES)) == train.families("classification")  # enough slots: per family


def test_best_reads_family_results_as_json_lists() -> None:
    def result(cid: str, score: float) -> dict:
        return {"candidate": {"id": cid}, "score": score}

    families = [json.dumps([result("0-logistic", 0.7), result("1-logistic", 0.8)]),
                json.dumps([result("2-random_forest", 0.8)])]
    assert train.best(families)["candidate"]["id"] == "1-logistic"  # tie: the earlier candidate
    assert train.best([result("3-hist_gradient_boosting", 0.9), *families])["score"] == 0.9
    with pytest.raises(ValueError, match="no candidate"):
        train.best([json.dumps([])])


def test_local_tasks_share_the_cpus_unless_the_user_set_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert model_threads()["OMP_NUM_THREADS"] == "4"  # two search tasks at once
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert model_threads()["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert model_threads()["OMP_NUM_THREADS"] == "3"
