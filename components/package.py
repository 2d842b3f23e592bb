"""Package: the chosen model in every form a version stores, made while the model is in memory.

The refit step fits the chosen candidate and packages it here: the pickle, the reference
sample (training rows with the model's predictions and the true labels, the drift baseline)
and the ONNX export checked against scikit-learn on the holdout. Register then writes these
bytes as they are: it never unpickles a model, so it needs no scikit-learn, and a re-run
that registers nothing new reads none of them.

On disk (a KFP artifact folder) a package is the files a version keeps under the same names:
``model.joblib``, ``reference.parquet``, ``onnx.json``, ``model.onnx`` when it converted, and
``trials.json`` (the search's trials) when the search recorded them.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.data import LABEL, PREDICTION

if TYPE_CHECKING:  # register reads packages without scikit-learn: the model-side imports stay in the functions
    import pandas as pd

    from components.data import Schema

REFERENCE_ROWS = 20_000
TRIALS = "trials.json"


@dataclass(frozen=True)
class ModelPackage:
    """The bytes of one model's version files."""

    model: bytes  # model.joblib
    reference: bytes  # reference.parquet
    onnx_report: dict[str, Any]
    onnx: bytes | None = None  # model.onnx, when the export converted
    trials: bytes | None = None  # trials.json: the search's trial records (components/tune.py), a retrain's warm start

    def files(self) -> dict[str, bytes]:
        """The version's files that come from the model, named as the registry stores them."""
        files = {"model.joblib": self.model, "reference.parquet": self.reference,
                 "onnx.json": json.dumps(self.onnx_report, indent=2, default=str).encode()}
        if self.onnx is not None:
            files["model.onnx"] = self.onnx
        if self.trials is not None:
            files[TRIALS] = self.trials
        return files

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files().items():
            (folder / name).write_bytes(data)

    @classmethod
    def load(cls, folder: str | Path) -> ModelPackage:
        """Read a saved package; names the missing file when the folder is not one."""
        folder = Path(folder)
        try:
            report = json.loads((folder / "onnx.json").read_bytes())
            onnx, trials = folder / "model.onnx", folder / TRIALS
            return cls((folder / "model.joblib").read_bytes(), (folder / "reference.parquet").read_bytes(), report,
                       onnx.read_bytes() if onnx.exists() else None, trials.read_bytes() if trials.exists() else None)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"model package {folder} is incomplete: {exc.filename} is missing") from None


def reference_sample(model: Any, frame: pd.DataFrame, schema: Schema, seed: int) -> pd.DataFrame:
    """Training features with the model's predictions and the true labels: the drift baseline."""
    from components.features import xy

    rows = frame.sample(n=min(len(frame), REFERENCE_ROWS), random_state=seed) if len(frame) > REFERENCE_ROWS else frame
    X, y = xy(rows, schema)
    ref = X.reset_index(drop=True).copy()
    ref[PREDICTION] = model.predict(X)
    ref[LABEL] = y.to_numpy()
    return ref


def package(model: Any, train: pd.DataFrame, holdout: pd.DataFrame, schema: Schema, seed: int,
            onnx: bool = True) -> ModelPackage:
    """Pickle ``model``, take its reference sample from ``train`` and export it to ONNX, checked on ``holdout``.

    ``onnx=False`` skips the export (the report says so; serving then uses scikit-learn).
    """
    import joblib

    from components.features import xy
    from components.onnx_export import export_onnx

    buf = io.BytesIO()
    joblib.dump(model, buf)
    ref = io.BytesIO()
    reference_sample(model, train, schema, seed).to_parquet(ref, index=False)
    if not onnx:
        return ModelPackage(buf.getvalue(), ref.getvalue(), {"converted": False, "passed": False, "task": schema.task,
                                                             "reason": "the ONNX export was not asked for"})
    data, report = export_onnx(model, xy(holdout, schema)[0], schema.task)
    return ModelPackage(buf.getvalue(), ref.getvalue(), report, data)
