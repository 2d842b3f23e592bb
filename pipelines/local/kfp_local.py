"""The child process of the embedded runner: one training-pipeline run on kfp.local.

kfp.local narrates every task on stdout and reconfigures the root logger while a task runs;
running it in a process of its own keeps that state out of the caller (``flywheel run``
sends traffic from threads while a retrain runs). The caller hands over the settings
through the environment (the only channel kfp.local's task processes inherit) and reads
the outcome from the step records in the store, never from this process's output.

Each task is forked from a task server that has kfp, pandas and scikit-learn imported
(``pipelines/local/task_server.py``) rather than started as a new interpreter; the setting
``warm_tasks`` (``FLYWHEEL_WARM_TASKS=false``) turns that off. What that and the search's
packing rely on in kfp.local and Python is checked first (components/compat.py): a failed check
ends this process with ``COMPAT_EXIT``, and the caller repeats the check to say which one.

    python -m pipelines.local.kfp_local <pipeline_root> <arguments as JSON>
"""

from __future__ import annotations

import contextlib
import json
import sys

COMPAT_EXIT = 78  # sysexits' EX_CONFIG: a library internal failed its check (components/compat.py)


def main(argv: list[str]) -> int:
    from components import compat
    from components.settings import load_settings
    from pipelines.local.task_server import warm_tasks

    root, arguments = argv[0], json.loads(argv[1])
    settings = load_settings()  # the caller's settings, from the environment it gave this process
    try:
        compat.check_local_runner(settings.warm_tasks, settings.local_search_packing)
    except compat.CompatError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return COMPAT_EXIT
    with warm_tasks() if settings.warm_tasks else contextlib.nullcontext() as python:
        from kfp import local

        from pipelines.training import build

        training_pipeline = build(parallelism=settings.parallelism)

        # kfp.local runs each task's `python3` as the launcher, when warm
        with compat.kfp_local_python(python) if python else contextlib.nullcontext():
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root, raise_on_error=False,
                       enable_caching=True)
            training_pipeline(**arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
