"""Fixtures for tests/integration/k8s: every build and render is produced once per session."""

from __future__ import annotations

import pytest
from k8s_support import (
    HELM_VALUE_SETS,
    KUSTOMIZATIONS,
    helm_render,
    kustomize,
    manifests,
    values_file,
)


@pytest.fixture(scope="session")
def builds() -> dict[str, list[dict]]:
    """Every manifest set we ship: kustomize base/overlays and the chart with each values file."""
    out = {name: kustomize(path) for name, path in KUSTOMIZATIONS.items()}
    for name, path in HELM_VALUE_SETS.items():
        out[name] = manifests(helm_render(values_file(path)))
    return out


@pytest.fixture(scope="session")
def helm_default() -> dict[str, str]:
    return helm_render(None)


@pytest.fixture(scope="session")
def helm_production() -> dict[str, str]:
    return helm_render(values_file(HELM_VALUE_SETS["helm-production"]))
