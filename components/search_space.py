"""The hyper-parameter search space as data: per model family, its default points and its ranges.

The project's space is ``search_space.yaml`` next to this module; a user's file (``--search-space``,
the ``search_space`` setting) replaces it whole. ``parse`` checks the file's shape without
scikit-learn (the search-space task starts without it); ``check_estimators`` checks each family
and parameter name against the estimators this build has (``components/train.py``), so a typo is
one sentence naming the family and parameter instead of a failed trial. Both raise
``SearchSpaceError``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from components.settings import ConfigError

DEFAULT_FILE = Path(__file__).with_name("search_space.yaml")
# Flywheel's own switch (a feature selection before the model), not an estimator parameter.
SELECT = "select"
_RANGE_KEYS = {"low", "high", "log", "int"}
TASKS = ("classification", "regression")


class SearchSpaceError(ConfigError):
    """The search space is wrong; the message names the file, family and parameter."""


def _where(source: str, family: str, param: str | None = None) -> str:
    return f"search space {source}: family {family!r}" + (f", parameter {param!r}" if param else "")


def _check_param(source: str, family: str, name: str, spec: Any) -> dict[str, Any]:
    """One parameter's spec, normalised: {"fixed": v} | {"choices": [...]} | {"low", "high", "log", "int"}."""
    where = _where(source, family, name)
    if spec is None or (isinstance(spec, dict) and isinstance(spec.get("choices"), list) and None in spec["choices"]):
        # KFP's parameters cannot carry a null (the space rides in the run's parameters and the fan-out's items)
        raise SearchSpaceError(f"{where}: null is not a value a run can carry; leave the parameter out for the estimator's default")
    if not isinstance(spec, dict):
        return {"fixed": spec}
    if set(spec) == {"choices"}:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise SearchSpaceError(f"{where}: choices must be a non-empty list")
        return {"choices": list(spec["choices"])}
    unknown = sorted(set(spec) - _RANGE_KEYS)
    if unknown or not {"low", "high"} <= set(spec):
        raise SearchSpaceError(f"{where}: a range is {{low, high[, log][, int]}} and choices is {{choices: [...]}}; "
                               f"got keys {sorted(spec)}")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
        raise SearchSpaceError(f"{where}: low and high must be numbers, got {low!r} and {high!r}")
    if low >= high:
        raise SearchSpaceError(f"{where}: low ({low}) must be below high ({high})")
    is_int, log = bool(spec.get("int", False)), bool(spec.get("log", False))
    if log and low <= 0:
        raise SearchSpaceError(f"{where}: a log scale needs low > 0, got {low}")
    if is_int and not (float(low).is_integer() and float(high).is_integer()):
        raise SearchSpaceError(f"{where}: an integer range needs integer bounds, got {low} and {high}")
    return {"low": int(low) if is_int else float(low), "high": int(high) if is_int else float(high), "log": log, "int": is_int}


def contains(spec: dict[str, Any], value: Any) -> bool:
    """Whether ``value`` lies in a parameter's (normalised) spec."""
    if "fixed" in spec:
        return value == spec["fixed"]
    if "choices" in spec:
        return value in spec["choices"]
    return isinstance(value, int | float) and not isinstance(value, bool) and spec["low"] <= value <= spec["high"]


def parse(data: Any, source: str = "(given)") -> dict[str, dict[str, Any]]:
    """The search space from a file's data: ``{family: {"defaults": {task: [points]}, "params": {name: spec}}}``.

    Raises SearchSpaceError naming the file, family and parameter.
    """
    if not isinstance(data, dict) or not data:
        raise SearchSpaceError(f"search space {source} must map model family names to their spaces")
    space: dict[str, dict[str, Any]] = {}
    for family, body in data.items():
        if not isinstance(body, dict) or not set(body) <= {"defaults", "params"} or "params" not in body:
            keys = sorted(body) if isinstance(body, dict) else type(body).__name__
            raise SearchSpaceError(f"{_where(source, str(family))}: give 'params' (and optionally 'defaults'), got {keys}")
        if not isinstance(body["params"], dict):
            raise SearchSpaceError(f"{_where(source, family)}: 'params' must map parameter names to ranges")
        params = {str(name): _check_param(source, family, str(name), spec) for name, spec in body["params"].items()}
        given = body.get("defaults") or []
        # one list for every task, or one per task (a classifier's and a regressor's defaults differ)
        per_task = given if isinstance(given, dict) else {task: given for task in TASKS}
        if set(per_task) - set(TASKS):
            raise SearchSpaceError(f"{_where(source, family)}: 'defaults' per task are keyed by {' or '.join(TASKS)}, "
                                   f"got {sorted(per_task)}")
        defaults = {}
        for task in TASKS:
            points = per_task.get(task) or []
            if not isinstance(points, list) or not all(isinstance(d, dict) for d in points):
                raise SearchSpaceError(f"{_where(source, family)}: 'defaults' must be a list of parameter mappings")
            for point in points:
                for name, value in point.items():
                    if name not in params:
                        raise SearchSpaceError(f"{_where(source, family, name)}: a default names a parameter that "
                                               f"'params' does not (it has {', '.join(params)})")
                    if not contains(params[name], value):
                        raise SearchSpaceError(f"{_where(source, family, name)}: the default {value!r} is outside its range")
            defaults[task] = [dict(d) for d in points]
        space[str(family)] = {"defaults": defaults, "params": params}
    return space


def load_data(path: str | Path | None = None) -> dict[str, Any]:
    """The search space file's data, checked (``parse``) and, when it is a user's file (``path``), every
    family and parameter checked against this build's estimators (``check_families``).

    It is the run parameter a pipeline run gets: plain data, so a cluster run needs no file. Raises
    SearchSpaceError naming the file, family and parameter.
    """
    p = Path(path).expanduser() if path else DEFAULT_FILE
    if not p.is_file():
        raise SearchSpaceError(f"search space file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"search space file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    space = parse(data, str(p))
    if path:
        check_families(space, str(p))
    return data


def load(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The search space in ``path`` (None: the project's), parsed. Raises SearchSpaceError naming the file."""
    return parse(load_data(path), str(path or DEFAULT_FILE))


def default() -> dict[str, dict[str, Any]]:
    """The project's search space (``search_space.yaml``)."""
    return load(None)


def _not_a_family(family: str, source: str) -> SearchSpaceError:
    from components.train import known_families

    return SearchSpaceError(f"search space {source}: {family!r} is not a model family of this build "
                            f"(known: {', '.join(known_families())})")


def for_task(space: dict[str, dict[str, Any]], task: str, user: bool) -> dict[str, dict[str, Any]]:
    """The families of ``space`` that have an estimator for ``task``, in the file's order.

    A family this build has no estimator for at all is an error in a user's file; in the project's
    own file it is a family still to come (xgboost, lightgbm before issue 25.3) and is left out.
    """
    from components.train import family_tasks

    chosen = {}
    for family, body in space.items():
        tasks = family_tasks(family)
        if not tasks and user:
            raise _not_a_family(family, "(the run's)")
        if task in tasks:
            chosen[family] = body
    if not chosen:
        raise SearchSpaceError(f"search space: no family in it can train a {task} model")
    return chosen


def check_families(space: dict[str, dict[str, Any]], source: str = "(given)") -> None:
    """Every family of a user's space is one of this build's, and every parameter one its estimator takes
    (scikit-learn's ``get_params``, for each task the family trains).

    Raises SearchSpaceError naming the family and the parameter, with the names it takes.
    """
    from components.train import family_tasks, parameter_names

    for family, body in space.items():
        tasks = family_tasks(family)
        if not tasks:
            raise _not_a_family(family, source)
        for task in tasks:
            accepted = parameter_names(family, task) | {SELECT}
            for name in body["params"]:
                if name not in accepted:
                    raise SearchSpaceError(f"{_where(source, family, name)}: not a parameter of its {task} estimator "
                                           f"(it takes {', '.join(sorted(accepted))})")


def suggest(trial: Any, params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One point of a family's space, proposed by an Optuna trial (fixed values as they are)."""
    point = {}
    for name, spec in params.items():
        if "fixed" in spec:
            point[name] = spec["fixed"]
        elif "choices" in spec:
            point[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec["int"]:
            point[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec["log"])
        else:
            point[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec["log"])
    return point


def distributions(params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The Optuna distributions of a family's space (fixed values have none): how recorded trials are added back."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, spec in params.items():
        if "choices" in spec:
            out[name] = CategoricalDistribution(spec["choices"])
        elif "low" in spec:
            cls = IntDistribution if spec["int"] else FloatDistribution
            out[name] = cls(spec["low"], spec["high"], log=spec["log"])
    return out
