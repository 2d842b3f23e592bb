"""A gradient-boosted model served by the real server: its native categorical splits through ONNX.

Given a promoted XGBoost classifier (three text classes, a categorical and a nullable numeric
feature) whose ONNX export passed its check, when clients call /predict and /predict_many over
HTTP, then the server answers with the ONNX runtime exactly what XGBoost predicts, an unseen
category included.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest

from components.model_runtime import records_of
from components.registry import Registry
from components.store import LocalStore
from testkit.models import add_version, wine_frame
from testkit.server import Server, serving_settings

XGBOOST = {"family": "xgboost", "params": {"n_estimators": 60, "max_depth": 4}, "select": False}


def _frame():
    return wine_frame().drop(columns=["harvest"])  # the date parts have no ONNX form


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gbt") / "store"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_version(Registry(LocalStore(root), "wine-xgb"), _frame(), "target", XGBOOST)
    server = Server(serving_settings(root, "wine-xgb", root.parent), root.parent / "server.log")
    try:
        yield server.start(), root
    finally:
        server.stop()


def test_xgboost_is_served_through_onnx_like_the_library(served) -> None:
    server, root = served
    frame = _frame().drop(columns=["target"])
    frame.loc[frame.index[:5], "region"] = "atlantis"  # a level training never saw
    r = httpx.post(f"{server.url}/predict_many", json={"records": records_of(frame)}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    model = Registry(LocalStore(root), "wine-xgb").load_model("v1")
    assert body["predictions"] == model.predict(frame).tolist()
    np.testing.assert_allclose(body["probabilities"], model.predict_proba(frame), atol=1e-4)
    assert body["classes"] == ["class_0", "class_1", "class_2"]

    one = httpx.post(f"{server.url}/predict", json={"records": records_of(frame.head(1))}, timeout=30)
    assert one.status_code == 200, one.text
    assert one.json()[0]["runtime"] == "onnx" and one.json()[0]["prediction"] == body["predictions"][0]


def test_the_version_records_a_passed_onnx_export(served) -> None:
    _, root = served
    report = json.loads(next(Path(root).rglob("onnx.json")).read_text())
    assert report["passed"], report["reason"]
