"""Importing a module changes nothing outside it; the entry points that want a change make it.

Each case runs in a new interpreter: what an import did to the process is seen there alone.
An atexit handler registered first runs last, so it sees what the others did at exit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = ("import atexit, gc, sys; atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0)); "
         "{statement}; from bentoml._internal.server.http import traffic; "
         "print('timeout middleware:', traffic.TimeoutMiddleware.__module__)")


def _effects(statement: str, store: Path) -> list[str]:
    code = PROBE.format(statement=statement)
    out = subprocess.run([sys.executable, "-c", code, str(store)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"PATH": "", "FLYWHEEL_STORE": str(store)}, check=True)
    return out.stdout.splitlines()


def test_importing_the_task_runtime_and_the_service_changes_nothing(tmp_path: Path) -> None:
    """The CLI, the CronJob and the tests import these; no heap freeze at their exit, BentoML untouched."""
    lines = _effects("import components.runtime, services.serving.service", tmp_path)
    assert lines == ["timeout middleware: bentoml._internal.server.http.traffic", "frozen at exit: False"]


def test_the_serving_worker_and_a_component_stage_make_their_changes(tmp_path: Path) -> None:
    statement = ("import services.serving.worker; from components import runtime; from components.settings import "
                 "load_settings; print(runtime.guarded(load_settings(), None, 'probe', lambda: 'the stage ran'))")
    lines = _effects(statement, tmp_path)
    assert lines == ["the stage ran", "timeout middleware: services.serving.deadline", "frozen at exit: True"]


def test_the_serving_worker_without_the_deadline_fix_leaves_bentoml_alone(tmp_path: Path) -> None:
    code = PROBE.format(statement="import services.serving.worker")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
                         env={"PATH": "", "FLYWHEEL_STORE": str(tmp_path), "FLYWHEEL_SERVING_DEADLINE_FIX": "false"})
    assert out.stdout.splitlines()[0] == "timeout middleware: bentoml._internal.server.http.traffic"
    assert "serving_deadline_fix is false: BentoML's own timeout middleware" in out.stderr
