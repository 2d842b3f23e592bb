"""`flywheel run` starts clean only for the demo model in a local store; anything else needs --force-reset.

Given a store holding another model's registry and logs (and the demo model in S3), when the
loop is asked to start clean, then it refuses with one sentence and every key is still there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.settings import Settings, load_settings
from components.store import Store, open_store
from pipelines.loop.guards import reset_demo
from pipelines.loop.run import LoopError, run_loop

KEYS = ("registry/{m}/champion.json", "predictions/{m}/date=2026-03-01/a.parquet", "triggers/{m}/k.json",
        "runs/{m}/r/status.json")


def seed(store: Store, model: str) -> list[str]:
    keys = [k.format(m=model) for k in KEYS]
    for k in keys:
        store.write(k, b"precious")
    return keys


def local(tmp_path: Path, model: str) -> Settings:
    return load_settings(store=str(tmp_path / "store"), model=model, spill_dir=str(tmp_path / "spill"),
                         pipeline_root=str(tmp_path / "kfp"))


def test_another_model_is_never_reset(tmp_path: Path) -> None:
    settings = local(tmp_path, "prod")
    store = open_store(settings.store, settings)
    keys = seed(store, "prod")
    with pytest.raises(LoopError, match="will not reset model 'prod'.*--keep.*--force-reset"):
        run_loop(settings, lambda _: None)
    assert all(store.read(k) == b"precious" for k in keys)


def test_the_demo_model_in_s3_is_never_reset(s3_settings: Settings) -> None:
    settings = s3_settings.model_copy(update={"model": "demo"})
    store = open_store(settings.store, settings)
    keys = seed(store, "demo")
    with pytest.raises(LoopError, match="only in a local store, not in s3://"):
        run_loop(settings, lambda _: None)
    assert all(store.read(k) == b"precious" for k in keys)


def test_forced_reset_touches_only_that_model(tmp_path: Path) -> None:
    settings = local(tmp_path, "prod")
    store = open_store(settings.store, settings)
    gone, kept = seed(store, "prod"), seed(store, "prod-2") + seed(store, "demo")
    reset_demo(store, settings, force=True)
    assert not any(store.exists(k) for k in gone)
    assert all(store.read(k) == b"precious" for k in kept)


def test_cli_refuses_with_one_sentence(s3_endpoint: str, s3_settings: Settings, tmp_path: Path) -> None:
    store = open_store(s3_settings.store, s3_settings)
    keys = seed(store, "x")
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "FLYWHEEL_SPILL_DIR": str(tmp_path / "spill"), "FLYWHEEL_PIPELINE_ROOT": str(tmp_path / "kfp")}
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--model", "x", "--store", s3_settings.store],
                          capture_output=True, text=True, env=env, timeout=120)
    said = " ".join(proc.stderr.split())  # the terminal wraps long lines
    assert proc.returncode == 1 and "will not reset model 'x'" in said and "Traceback" not in said
    assert all(store.read(k) == b"precious" for k in keys)


def test_cli_says_which_settings_the_loop_replaces(tmp_path: Path) -> None:
    """`flywheel run` sets its own min_rows, cooldown and poll interval: it says so, with the values it replaces."""
    blocked = tmp_path / "file"
    blocked.write_text("a file, so the store below it cannot be written")
    env = {**os.environ, "FLYWHEEL_MIN_ROWS": "800"}
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--store", str(blocked / "store")],
                          capture_output=True, text=True, env=env, timeout=120)
    said = " ".join(proc.stdout.split())
    assert proc.returncode == 1 and "is not writable" in " ".join(proc.stderr.split())
    assert ("it runs with cooldown_minutes=0 (instead of 60), min_rows=500 (instead of 800), "
            "serving_poll_seconds=1.0 (instead of 2.0)") in said
