"""The library internals Flywheel relies on: each checked before it is used, each with a switch.

Five things Flywheel does depend on behaviour that a pinned library does not promise (each
saves something measured; the module that uses it says what). Each is a ``Seam`` here: the
library and the versions it was verified on, and the setting that turns it off. Before a seam
is used, its check verifies that the internal is still there and still behaves as it did; if
not, ``CompatError`` says in one sentence which library and version broke it and which setting
runs Flywheel without it. An upgrade of kfp, BentoML, Evidently or Python then stops the
process that relies on it at start-up, instead of quietly running differently.

    seam                      relies on                                          used by                          switch
    request deadline          BentoML builds its timeout middleware from          services/serving/worker.py       serving_deadline_fix
                              bentoml._internal.server.http.traffic.TimeoutMiddleware
    kfp.local's python        kfp.local's SubprocessRunner starts each task as    pipelines/local/kfp_local.py     warm_tasks
                              ``sys.executable`` (the warm launcher, swapped in)
    task server               os.pidfd_open, socket.send_fds/recv_fds,            pipelines/local/task_server.py   warm_tasks
                              atexit._run_exitfuncs, /proc/self/task
    local search packing      kfp.local runs at most 2 ParallelFor iterations      pipelines/local/runner.py        local_search_packing
                              at once (its ParallelExecutor's cap, copied here)
    report stat test          Evidently's stat-test registry (evidently.legacy)   services/monitoring/report.py    report_chi2_homogeneity

Importing this module imports none of those libraries: each check imports its own when it runs.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.metadata
import inspect
import os
import platform
import socket
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


class CompatError(RuntimeError):
    """A library internal Flywheel relies on is gone or behaves differently; the message names the
    library, its version and the setting that runs Flywheel without it."""


class _Broken(Exception):
    """Raised inside a check: what is wrong, as a clause of the CompatError's sentence."""


@dataclass(frozen=True)
class Seam:
    """One reliance on a library internal: whose, verified on which versions, switched off by which setting."""

    title: str  # the library as people write it: "BentoML"
    distribution: str  # its package, for the installed version; "python" for the interpreter
    verified: str  # the versions it was verified on (pyproject.toml pins them)
    switch: str  # the Settings field that turns the seam off
    without: str  # what Flywheel does with the switch off

    def installed(self) -> str:
        if self.distribution == "python":
            return platform.python_version()
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "(not installed)"

    def error(self, problem: str) -> CompatError:
        return CompatError(f"{self.title} {self.installed()}: {problem} (verified on {self.verified}); "
                           f"set FLYWHEEL_{self.switch.upper()}=false to run without it ({self.without})")

    def require(self, check: Callable[[], Any]) -> Any:
        """Run ``check``; a broken internal becomes this seam's CompatError."""
        try:
            return check()
        except _Broken as exc:
            raise self.error(str(exc)) from None


REQUEST_DEADLINE = Seam("BentoML", "bentoml", "1.4.x", "serving_deadline_fix",
                        "BentoML's own request timeout, which keeps every request's objects alive for the whole timeout")
KFP_LOCAL_PYTHON = Seam("kfp", "kfp", "2.17.x", "warm_tasks", "every kfp.local task in a new interpreter")
TASK_SERVER = Seam("Python", "python", "3.11.x on Linux", "warm_tasks", "every kfp.local task in a new interpreter")
LOCAL_SEARCH_PACKING = Seam("kfp", "kfp", "2.17.x", "local_search_packing",
                            "one search task per model family, each with every CPU")
REPORT_STAT_TEST = Seam("Evidently", "evidently", "0.7.x", "report_chi2_homogeneity",
                        "the reports show Evidently's own chi-square test for categorical columns; the decision is unchanged")


def _module(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise _Broken(f"{name} cannot be imported") from None


def _attribute(owner: Any, path: str, name: str) -> Any:
    value = getattr(owner, name, None)
    if value is None:
        raise _Broken(f"{path}.{name} is gone")
    return value


# --- BentoML: the request deadline ------------------------------------------------------------

TRAFFIC = "bentoml._internal.server.http.traffic"
BASE_APP = "bentoml._internal.server.base_app"


def replace_bentoml_timeout(middleware: type, enabled: bool) -> bool:
    """Make BentoML build its request-timeout middleware (``traffic.timeout``) from ``middleware``.

    Returns False, changing nothing, when switched off (``serving_deadline_fix``). Must run
    before BentoML builds the service's app (the serving worker's entry point does it). Raises
    CompatError when BentoML no longer builds that middleware the way this relies on.
    """
    if not enabled:
        return False
    REQUEST_DEADLINE.require(lambda: _replace_timeout(middleware))
    return True


def _replace_timeout(middleware: type) -> None:
    traffic, base_app = _module(TRAFFIC), _module(BASE_APP)
    factory = _attribute(base_app, BASE_APP, "BaseAppFactory")
    builder = inspect.getattr_static(factory, "middlewares", None)
    if not isinstance(builder, property):
        raise _Broken(f"{BASE_APP}.BaseAppFactory.middlewares is gone")
    service_factory = _attribute(_module("_bentoml_impl.server.app"), "_bentoml_impl.server.app", "ServiceAppFactory")
    if not issubclass(service_factory, factory):
        raise _Broken("the service's app factory no longer extends BaseAppFactory, whose middlewares hold the timeout")
    original = _attribute(traffic, TRAFFIC, "TimeoutMiddleware")
    if original is not middleware:
        params = list(inspect.signature(original).parameters)
        if params != ["app", "timeout"]:
            raise _Broken(f"{TRAFFIC}.TimeoutMiddleware takes ({', '.join(params)}), not (app, timeout)")
        traffic.TimeoutMiddleware = middleware
    # what BentoML builds for a service with a timeout and no concurrency limit: ours, with the same arguments
    try:
        built = [(m.cls, m.kwargs) for m in builder.fget(types.SimpleNamespace(timeout=60, max_concurrency=None))]
    except (AttributeError, TypeError) as exc:
        built = [(type(exc), {"error": str(exc)})]
    if built != [(middleware, {"timeout": 60})]:
        traffic.TimeoutMiddleware = original
        raise _Broken(f"{BASE_APP}.BaseAppFactory.middlewares no longer builds its timeout middleware from "
                      f"{TRAFFIC}.TimeoutMiddleware (it built {built})")


# --- kfp.local: the warm launcher as its python ------------------------------------------------

TASK_HANDLER = "kfp.local.subprocess_task_handler"


@contextlib.contextmanager
def kfp_local_python(python: str) -> Iterator[None]:
    """While inside, kfp.local's SubprocessRunner starts each task with ``python`` instead of the interpreter.

    kfp.local runs ``python3 -m kfp.dsl.executor_main ...`` with ``python3`` replaced by
    ``sys.executable`` (read when each task starts), so this swaps ``sys.executable``.
    """
    check_kfp_local_python()
    real, sys.executable = sys.executable, python
    try:
        yield
    finally:
        sys.executable = real


def check_kfp_local_python() -> None:
    """CompatError unless kfp.local still starts each task's ``python3`` as ``sys.executable``."""
    KFP_LOCAL_PYTHON.require(_kfp_local_python)


def _kfp_local_python() -> None:
    handler = _module(TASK_HANDLER)
    runner = _attribute(handler, TASK_HANDLER, "SubprocessTaskHandler")
    environment = _attribute(handler, TASK_HANDLER, "environment")
    replace = _attribute(handler, TASK_HANDLER, "replace_python_executable")
    if not {"environment", "replace_python_executable"} <= set(runner.run.__code__.co_names):
        raise _Broken("kfp.local's SubprocessTaskHandler.run no longer picks its python through "
                      "environment() and replace_python_executable()")
    probe = "/flywheel-compat-probe/python"
    real, sys.executable = sys.executable, probe
    try:
        with environment(use_venv=False) as python:
            pass
        command = replace(["python3", "-m", "kfp.dsl.executor_main"], python)
    except TypeError as exc:
        raise _Broken(f"kfp.local's task environment changed its arguments ({exc})") from None
    finally:
        sys.executable = real
    if python != probe or command[0] != probe:
        raise _Broken("kfp.local no longer runs a task's python3 as sys.executable")


def check_local_runner(warm_tasks: bool, search_packing: bool) -> None:
    """CompatError unless what the embedded runner relies on with these settings is in place.

    Runs where kfp.local runs (pipelines/local/kfp_local.py), which imports kfp anyway.
    """
    if warm_tasks:
        check_kfp_local_python()
        check_task_server()
    if search_packing:
        check_local_parallelism()


# --- Python: what the fork server uses ---------------------------------------------------------

def check_task_server() -> None:
    """CompatError unless this interpreter and kernel have what ``pipelines/local/task_server.py`` uses."""
    TASK_SERVER.require(_task_server)


def _task_server() -> None:
    for owner, path, name in ((os, "os", "fork"), (os, "os", "pidfd_open"), (socket, "socket", "send_fds"),
                              (socket, "socket", "recv_fds"), (atexit, "atexit", "_run_exitfuncs")):
        _attribute(owner, path, name)
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError as exc:
        raise _Broken(f"os.pidfd_open fails on this kernel ({exc})") from None
    try:
        os.listdir("/proc/self/task")
    except OSError as exc:
        raise _Broken(f"/proc/self/task cannot be read ({exc}), so the task server cannot count its threads") from None


def run_atexit_handlers() -> None:
    """The interpreter's own exit step (atexit handlers), for a forked task that ends by ``os._exit``."""
    atexit._run_exitfuncs()


# --- kfp.local: how many ParallelFor iterations it runs at once --------------------------------

LOCAL_PARALLEL_TASKS = 2  # kfp.local's ParallelExecutor cap (kfp 2.17); checked by check_local_parallelism
ORCHESTRATOR = "kfp.local.orchestrator.enhanced_dag_orchestrator"


def local_parallel_tasks(enabled: bool) -> int | None:
    """The ParallelFor iterations kfp.local runs at once, for packing the search; None when switched off.

    The number is the copy above: the process that runs kfp.local checks it (check_local_runner),
    so the caller need not import kfp to plan the run.
    """
    return LOCAL_PARALLEL_TASKS if enabled else None


def check_local_parallelism() -> None:
    """CompatError unless kfp.local still runs at most LOCAL_PARALLEL_TASKS ParallelFor iterations at once."""
    LOCAL_SEARCH_PACKING.require(_local_parallelism)


def _local_parallelism() -> None:
    executor = _attribute(_module(ORCHESTRATOR), ORCHESTRATOR, "ParallelExecutor")
    try:
        default, asked_for_more = executor(), executor(max_workers=64)
        caps = {default.max_workers, asked_for_more.max_workers, default.conservative_max}
    except (TypeError, AttributeError) as exc:
        raise _Broken(f"kfp.local's ParallelExecutor changed ({exc})") from None
    if caps != {LOCAL_PARALLEL_TASKS}:
        raise _Broken(f"kfp.local's ParallelExecutor runs {sorted(caps)} ParallelFor iterations at once, "
                      f"not {LOCAL_PARALLEL_TASKS}")
    if "conservative_max" not in executor.execute_parallel_tasks.__code__.co_names:
        raise _Broken("kfp.local's ParallelExecutor no longer caps each ParallelFor at its conservative maximum")


# --- Evidently: a stat test of our own, by name ------------------------------------------------

STAT_TESTS = "evidently.legacy.calculations.stattests.registry"
_registered: set[str] = set()


def register_stat_test(name: str, display_name: str, p_value: Callable[[Any, Any], float], threshold: float,
                       enabled: bool) -> bool:
    """Make a categorical two-sample test usable in Evidently reports as ``method=name`` (once per process).

    ``p_value(reference, current)`` takes two pandas Series. Returns False, changing nothing,
    when switched off (``report_chi2_homogeneity``); raises CompatError when Evidently's
    registry no longer takes it or no longer finds it by name.
    """
    if not enabled:
        return False
    if name not in _registered:
        REPORT_STAT_TEST.require(lambda: _register(name, display_name, p_value, threshold))
        _registered.add(name)
    return True


def _register(name: str, display_name: str, p_value: Callable[[Any, Any], float], threshold: float) -> None:
    import pandas as pd

    registry = _module(STAT_TESTS)
    stat_test, register, lookup = (_attribute(registry, STAT_TESTS, n) for n in ("StatTest", "register_stattest", "get_stattest"))
    categorical = getattr(_attribute(_module("evidently.legacy.core"), "evidently.legacy.core", "ColumnType"), "Categorical", None)
    if categorical is None:
        raise _Broken("evidently.legacy.core.ColumnType.Categorical is gone")

    def impl(reference: Any, current: Any, feature_type: Any, threshold: float) -> tuple[float, bool]:
        p = p_value(reference, current)
        return p, p < threshold

    reference, current = pd.Series(list("aaabbc") * 20), pd.Series(list("abbccc") * 20)
    try:
        register(stat_test(name=name, display_name=display_name, allowed_feature_types=[categorical],
                           default_threshold=threshold), default_impl=impl)
        found = lookup(reference, current, categorical, name)
        score = found(reference, current, categorical, threshold).drift_score
    except (TypeError, ValueError, AttributeError, NotImplementedError) as exc:
        raise _Broken(f"{STAT_TESTS} no longer registers and runs a stat test by name ({type(exc).__name__}: {exc})") from None
    if score != p_value(reference, current):
        raise _Broken(f"{STAT_TESTS} found {name!r} but did not run the registered function")
