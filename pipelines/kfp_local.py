"""The child process of the embedded runner: one training-pipeline run on kfp.local.

kfp.local narrates every task on stdout and reconfigures the root logger while a task runs;
running it in a process of its own keeps that state out of the caller (``flywheel run``
sends traffic from threads while a retrain runs). The caller hands over the settings
through the environment (the only channel kfp.local's task processes inherit) and reads
the outcome from the step records in the store, never from this process's output.

Each task is forked from a task server that has kfp, pandas and scikit-learn imported
(``pipelines/task_server.py``) rather than started as a new interpreter; the setting
``warm_tasks`` (``FLYWHEEL_WARM_TASKS=false``) turns that off.

    python -m pipelines.kfp_local <pipeline_root> <arguments as JSON>
"""

from __future__ import annotations

import contextlib
import json
import sys


def main(argv: list[str]) -> int:
    from components.settings import load_settings
    from pipelines.task_server import warm_tasks

    root, arguments = argv[0], json.loads(argv[1])
    settings = load_settings()  # the caller's settings, from the environment it gave this process
    with warm_tasks() if settings.warm_tasks else contextlib.nullcontext(sys.executable) as python:
        from kfp import local

        from pipelines.training import build

        training_pipeline = build(parallelism=settings.parallelism)

        # kfp.local runs each task with `python3` replaced by sys.executable: the launcher, when warm
        real, sys.executable = sys.executable, python
        try:
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root, raise_on_error=False,
                       enable_caching=True)
            training_pipeline(**arguments)
        finally:
            sys.executable = real
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
