"""The library internals Flywheel relies on (components/compat.py): each check passes on the pinned
versions, fails with one sentence when an upgrade takes the internal away, and is skipped when its
setting turns the seam off.

An upgrade is simulated by taking the internal away with monkeypatch, in this process only.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from components import compat
from components.compat import CompatError
from components.data import DatasetSpec
from components.settings import load_settings
from services.serving.deadline import RequestDeadline

VERSION = r"\d+\.\d+\.\d+"


def sentence(library: str, problem: str, verified: str, switch: str) -> str:
    """The CompatError's message as a pattern: library and version, the problem, the switch."""
    return (rf"^{library} {VERSION}: {problem}.* \(verified on {re.escape(verified)}\); "
            rf"set FLYWHEEL_{switch}=false to run without it \(.+\)$")


# --- BentoML: the request deadline -----------------------------------------------------------

@pytest.fixture
def traffic(monkeypatch: pytest.MonkeyPatch):
    """BentoML's traffic module, with its TimeoutMiddleware put back after the test."""
    from bentoml._internal.server.http import traffic

    monkeypatch.setattr(traffic, "TimeoutMiddleware", traffic.TimeoutMiddleware)
    return traffic


def _built(timeout: float = 60) -> list:
    """The timeout middleware BentoML builds for a service with ``traffic.timeout``."""
    from bentoml._internal.server.base_app import BaseAppFactory

    class Factory(BaseAppFactory):
        name = "flywheel-serving"

    return [(m.cls, m.kwargs) for m in Factory(timeout=timeout).middlewares]


def test_bentoml_builds_the_request_deadline_once_installed(traffic) -> None:
    original = traffic.TimeoutMiddleware
    assert _built() == [(original, {"timeout": 60})]
    assert compat.replace_bentoml_timeout(RequestDeadline, True) is True
    assert _built() == [(RequestDeadline, {"timeout": 60})]
    assert compat.replace_bentoml_timeout(RequestDeadline, True) is True  # idempotent
    assert _built() == [(RequestDeadline, {"timeout": 60})]


def test_a_bentoml_without_the_timeout_middleware_fails_with_one_sentence(traffic, monkeypatch) -> None:
    monkeypatch.delattr(traffic, "TimeoutMiddleware")
    with pytest.raises(CompatError, match=sentence("BentoML", re.escape(f"{compat.TRAFFIC}.TimeoutMiddleware is gone"),
                                                   "1.4.x", "SERVING_DEADLINE_FIX")):
        compat.replace_bentoml_timeout(RequestDeadline, True)


def test_a_bentoml_timeout_middleware_with_other_arguments_is_refused_and_left_alone(traffic, monkeypatch) -> None:
    class Changed:
        def __init__(self, app, timeout, clock) -> None: ...

    monkeypatch.setattr(traffic, "TimeoutMiddleware", Changed)
    with pytest.raises(CompatError, match=r"TimeoutMiddleware takes \(app, timeout, clock\), not \(app, timeout\)"):
        compat.replace_bentoml_timeout(RequestDeadline, True)
    assert traffic.TimeoutMiddleware is Changed


def test_a_bentoml_that_builds_its_middleware_another_way_is_refused_and_restored(traffic, monkeypatch) -> None:
    from bentoml._internal.server.base_app import BaseAppFactory
    from starlette.middleware import Middleware

    original = traffic.TimeoutMiddleware
    # an upgrade that binds the class at import: swapping the module's name no longer reaches the app
    monkeypatch.setattr(BaseAppFactory, "middlewares", property(lambda self: [Middleware(original, timeout=self.timeout)]))
    with pytest.raises(CompatError, match="no longer builds its timeout middleware from"):
        compat.replace_bentoml_timeout(RequestDeadline, True)
    assert traffic.TimeoutMiddleware is original


def test_with_serving_deadline_fix_off_bentoml_is_left_alone(traffic, monkeypatch) -> None:
    monkeypatch.delattr(traffic, "TimeoutMiddleware")  # not even checked
    assert compat.replace_bentoml_timeout(RequestDeadline, False) is False
    assert not hasattr(traffic, "TimeoutMiddleware")


# --- kfp.local's python and the task server's Python -------------------------------------------

def test_the_embedded_runners_internals_pass_on_the_pinned_versions() -> None:
    compat.check_local_runner(warm_tasks=True, search_packing=True)


def test_kfp_local_runs_tasks_with_the_swapped_python_and_gets_it_back() -> None:
    from kfp.local import subprocess_task_handler as handler

    real = sys.executable
    with compat.kfp_local_python("/opt/launcher/python"), handler.environment(use_venv=False) as python:
        assert python == "/opt/launcher/python"
    assert sys.executable == real


def test_a_kfp_local_that_picks_its_own_python_fails_with_one_sentence(monkeypatch) -> None:
    from kfp.local import subprocess_task_handler as handler

    @contextlib.contextmanager
    def environment(use_venv: bool, runner_config=None, has_pip_install: bool = False):
        yield "/usr/bin/python3"

    monkeypatch.setattr(handler, "environment", environment)
    with pytest.raises(CompatError, match=sentence("kfp", "kfp.local no longer runs a task's python3 as sys.executable",
                                                   "2.17.x", "WARM_TASKS")):
        compat.check_local_runner(warm_tasks=True, search_packing=False)


def test_a_kfp_local_without_its_python_replacement_fails(monkeypatch) -> None:
    from kfp.local import subprocess_task_handler as handler

    monkeypatch.delattr(handler, "replace_python_executable")
    with pytest.raises(CompatError, match=re.escape(f"{compat.TASK_HANDLER}.replace_python_executable is gone")):
        compat.check_kfp_local_python()


def test_a_python_without_atexit_run_exitfuncs_fails_with_one_sentence(monkeypatch) -> None:
    monkeypatch.delattr(atexit, "_run_exitfuncs")
    with pytest.raises(CompatError, match=sentence("Python", "atexit._run_exitfuncs is gone", "3.11.x on Linux",
                                                   "WARM_TASKS")):
        compat.check_local_runner(warm_tasks=True, search_packing=False)


def test_with_warm_tasks_off_neither_kfp_local_nor_python_is_checked(monkeypatch) -> None:
    from kfp.local import subprocess_task_handler as handler

    monkeypatch.delattr(handler, "environment")
    monkeypatch.delattr(atexit, "_run_exitfuncs")
    compat.check_local_runner(warm_tasks=False, search_packing=False)


# --- kfp.local's ParallelFor cap ---------------------------------------------------------------

def test_a_kfp_local_running_more_iterations_at_once_fails_with_one_sentence(monkeypatch) -> None:
    from kfp.local.orchestrator import enhanced_dag_orchestrator as orchestrator

    original = orchestrator.ParallelExecutor.__init__

    def wider(self, max_workers=None) -> None:
        original(self, max_workers)
        self.conservative_max = self.max_workers = 4

    monkeypatch.setattr(orchestrator.ParallelExecutor, "__init__", wider)
    with pytest.raises(CompatError, match=sentence("kfp", re.escape("kfp.local's ParallelExecutor runs [4] ParallelFor "
                                                                    "iterations at once, not 2"), "2.17.x",
                                                   "LOCAL_SEARCH_PACKING")):
        compat.check_local_runner(warm_tasks=False, search_packing=True)
    compat.check_local_runner(warm_tasks=False, search_packing=False)  # the switch: not relied on


def test_without_search_packing_the_search_is_one_task_per_family_with_no_thread_limit(tmp_path, monkeypatch) -> None:
    from pipelines.local.runner import child_environment, model_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    packed = load_settings(store=str(tmp_path))
    unpacked = packed.model_copy(update={"local_search_packing": False})
    assert compat.local_parallel_tasks(packed.local_search_packing) == 2
    assert compat.local_parallel_tasks(unpacked.local_search_packing) is None
    assert model_threads(None) == {}
    assert "OMP_NUM_THREADS" in child_environment(packed, "r", str(tmp_path))
    assert "OMP_NUM_THREADS" not in child_environment(unpacked, "r", str(tmp_path))


def test_a_failed_check_in_kfp_locals_process_is_the_callers_one_sentence(tmp_path, monkeypatch) -> None:
    """kfp.local's process checks first and exits COMPAT_EXIT; the caller repeats the check to say which."""
    from pipelines.local.runner import run_training

    data = tmp_path / "data.csv"
    data.write_text("x,y\n1,0\n2,1\n")
    # the same "upgrade" in both processes: here, and in kfp.local's through a sitecustomize module
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text("import atexit\ndel atexit._run_exitfuncs\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.delattr(atexit, "_run_exitfuncs")
    settings = load_settings(store=str(tmp_path / "store"), pipeline_root=str(tmp_path / "root"))
    with pytest.raises(CompatError, match=sentence("Python", "atexit._run_exitfuncs is gone", "3.11.x on Linux",
                                                   "WARM_TASKS")):
        run_training(DatasetSpec(str(data), "y"), settings)
    logs = list((tmp_path / "root" / "logs").glob("*.log"))
    assert len(logs) == 1 and "error: Python" in logs[0].read_text()  # the child said it first


# --- Evidently: the report's stat test ---------------------------------------------------------

@pytest.fixture
def unregistered(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process has registered no stat test yet (registration is once per process)."""
    monkeypatch.setattr(compat, "_registered", set())


def test_evidently_runs_the_registered_test_by_name(unregistered) -> None:
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    from services.monitoring import drift
    from services.monitoring.report import register_chi2_homogeneity

    assert register_chi2_homogeneity(True) is True
    ref, cur = pd.Series(list("aabbbc") * 50), pd.Series(list("abbccc") * 50)
    found = get_stattest(ref, cur, ColumnType.Categorical, "chi2_homogeneity")
    assert found(ref, cur, ColumnType.Categorical, 0.05).drift_score == drift.chi2_homogeneity(ref, cur)[1]


def test_an_evidently_without_the_legacy_registry_fails_with_one_sentence(unregistered, monkeypatch) -> None:
    from evidently.legacy.calculations.stattests import registry

    from services.monitoring.report import register_chi2_homogeneity

    monkeypatch.delattr(registry, "register_stattest")
    with pytest.raises(CompatError, match=sentence("Evidently", re.escape(f"{compat.STAT_TESTS}.register_stattest is gone"),
                                                   "0.7.x", "REPORT_CHI2_HOMOGENEITY")):
        register_chi2_homogeneity(True)


def test_an_evidently_that_ignores_the_registered_function_fails(unregistered, monkeypatch) -> None:
    from evidently.legacy.calculations.stattests import registry

    from services.monitoring.report import register_chi2_homogeneity

    monkeypatch.setattr(registry, "register_stattest", lambda stat_test, default_impl=None: None)  # registers nothing
    monkeypatch.delitem(registry._registered_stat_tests, "chi2_homogeneity", raising=False)  # nor did it before
    with pytest.raises(CompatError, match="no longer registers and runs a stat test by name"):
        register_chi2_homogeneity(True)


def test_with_report_chi2_homogeneity_off_the_report_uses_evidentlys_chi_square(unregistered, monkeypatch) -> None:
    from evidently.legacy.calculations.stattests import registry

    from components.data import infer_schema
    from services.monitoring.report import drift_report, report_method

    monkeypatch.delattr(registry, "register_stattest")  # the registry an upgrade took away: not needed now
    assert report_method("categorical", False) == "chisquare" and report_method("numeric", False) == "ks"
    frame = pd.DataFrame({"x": [float(i % 17) for i in range(300)], "c": list("aabbbc") * 50, "y": [0, 1] * 150})
    schema = infer_schema(frame, DatasetSpec("memory", "y"))
    reference = frame.assign(_prediction=frame["y"].astype(str))
    snapshot = drift_report(reference, reference, schema, 0.3, pd.Timestamp("2025-01-01", tz="UTC").to_pydatetime(),
                            "drift", homogeneity=False)
    body = json.dumps(snapshot.dict(), default=str)
    assert "chisquare" in body.lower() and "chi2_homogeneity" not in body


def test_flywheel_monitor_checks_evidently_at_start_up(tmp_path) -> None:
    """The CronJob's entry point fails before its pass, with the sentence and exit code 1."""
    code = ("import sys; from evidently.legacy.calculations.stattests import registry; del registry.register_stattest; "
            "from pipelines.cli import main; sys.argv = ['flywheel', 'monitor']; main()")
    env = {"PATH": "", "FLYWHEEL_STORE": str(tmp_path / "store"), "FLYWHEEL_EVIDENTLY_WORKSPACE": ""}
    broken = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                            cwd=Path(__file__).resolve().parents[2])
    assert broken.returncode == 1, broken.stderr[-2000:]
    assert "error: Evidently" in broken.stderr and "set FLYWHEEL_REPORT_CHI2_HOMOGENEITY=false" in broken.stderr
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**env, "FLYWHEEL_REPORT_CHI2_HOMOGENEITY": "false"}, cwd=Path(__file__).resolve().parents[2])
    assert off.returncode == 0 and "Evidently" not in off.stderr, off.stderr[-2000:]
    assert "model demo has no champion yet" in off.stdout  # the pass ran (and says there is nothing to monitor)
