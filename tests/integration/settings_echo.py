"""A one-step pipeline whose step writes the settings it sees (tests/integration/test_settings_route.py runs it on kfp.local).

    python -m tests.integration.settings_echo <pipeline_root> <output.json>

It runs in the environment the caller gives it, as the embedded runner's kfp.local process does.
"""

import sys

from kfp import dsl, local

from components.kfp_components import component


@component
def echo_settings(path: str) -> None:
    """Write the settings this step's process builds from its environment, as JSON."""
    import json

    from components.settings import load_settings

    with open(path, "w") as f:
        json.dump(load_settings().model_dump(mode="json"), f)


@dsl.pipeline(name="settings-echo")
def echo_pipeline(path: str) -> None:
    echo_settings(path=path).set_caching_options(False)


if __name__ == "__main__":
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[1], raise_on_error=True)
    echo_pipeline(path=sys.argv[2])
