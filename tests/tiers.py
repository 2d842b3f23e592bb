"""What a test tier does when it cannot run here: skip with the reason, or fail under CI.

``make test`` and a developer's ``make container-test`` skip a tier this machine cannot run,
with one sentence naming what is missing. ``.ci/run`` sets ``FLYWHEEL_REQUIRE_TIERS=1``: a tier
it runs that cannot run fails, since a missing tool is an install step to add, not a skip (the
shell side is ``tier_unavailable`` in k8s/container-tools.sh).
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_TIERS = "FLYWHEEL_REQUIRE_TIERS"


def unavailable(why: str) -> NoReturn:
    """End the calling fixture or test: a failure naming ``why`` when tiers are required, else a skip."""
    if os.environ.get(REQUIRE_TIERS) == "1":
        pytest.fail(f"{why} ({REQUIRE_TIERS}=1: a tier that cannot run fails)", pytrace=False)
    pytest.skip(why)
