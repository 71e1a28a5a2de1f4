"""The chart tests need helm: without `build/tools/helm` (or `$HELM`) they skip, saying how to get it; with
MCPFLEET_REQUIRE_HELM=1 (CI sets it) they fail instead."""

from __future__ import annotations

import os

import pytest
from chart_support import helm_path

REQUIRED = os.environ.get("MCPFLEET_REQUIRE_HELM") == "1"


@pytest.fixture
def helm_available() -> None:
    """Use with `pytestmark = pytest.mark.usefixtures("helm_available")`."""
    if helm_path() is None:
        problem = "no helm at build/tools/helm (nor $HELM)"
        if REQUIRED:
            pytest.fail(f"MCPFLEET_REQUIRE_HELM=1 but {problem}", pytrace=False)
        pytest.skip(f"{problem}: run scripts/fetch-helm.sh (make test does) or set HELM")
