"""Fixtures for the Kubernetes tests: `kube_api` opens an emulator inside the test's own event loop.

Tests here are sync and call `anyio.run`, like the rest of the suite, so the fixture hands out the async context
manager rather than a server that would live on another loop: `async with kube_api() as kube:`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from kube_emulator import KubeEmulator, running_kube


@pytest.fixture
def kube_api() -> Callable[..., AbstractAsyncContextManager[KubeEmulator]]:
    """`async with kube_api(**KubeEmulator options) as kube:` a running emulator on `kube.url`."""

    def open_kube(**options: Any) -> AbstractAsyncContextManager[KubeEmulator]:
        return running_kube(**options)

    return open_kube
