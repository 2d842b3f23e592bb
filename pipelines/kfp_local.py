"""The child process of the embedded runner: one training-pipeline run on kfp.local.

kfp.local narrates every task on stdout and reconfigures the root logger while a task runs;
running it in a process of its own keeps that state out of the caller (``flywheel run``
sends traffic from threads while a retrain runs). The caller hands over the settings
through the environment (the only channel kfp.local's task processes inherit) and reads
the outcome from the step records in the store, never from this process's output.

    python -m pipelines.kfp_local <pipeline_root> <arguments as JSON>
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from kfp import local

    from pipelines.training import training_pipeline

    root, arguments = argv[0], json.loads(argv[1])
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root, raise_on_error=False,
               enable_caching=True)
    training_pipeline(**arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
