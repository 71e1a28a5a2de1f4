"""Fixtures of the Docker tests: the engine, the images, project names, and a check that no test leaves a
container, network or volume behind.

Without an engine the tests skip, saying how to get one; with MCPFLEET_REQUIRE_DOCKER=1 (CI sets it) they fail.
The images are built before the first test that needs them starts its timer: a first build (base image from
Debian packages, wheels, two `docker build`s) takes longer than a test may.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cache
from typing import Any

import docker_support
import pytest
from docker_support import DockerImages, build_images, engine_problem, leftovers, ours, present, remove

REQUIRED = os.environ.get("MCPFLEET_REQUIRE_DOCKER") == "1"


@cache
def _engine_problem() -> str | None:
    return engine_problem()


@cache
def _images() -> DockerImages | str:
    """The images, or why they could not be built; built once per session."""
    try:
        return build_images()
    except RuntimeError as exc:
        return str(exc)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """Build the images before the timer of the first test that needs them starts (pytest-timeout counts
    fixture setup); returns nothing, so pytest-timeout still sets the timer."""
    if "docker_images" in getattr(item, "fixturenames", ()) and _engine_problem() is None:
        _images()


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A Docker engine that answers, and the docker CLI; else skip (fail with MCPFLEET_REQUIRE_DOCKER=1)."""
    if problem := _engine_problem():
        if REQUIRED:
            pytest.fail(f"MCPFLEET_REQUIRE_DOCKER=1 but {problem}", pytrace=False)
        pytest.skip(f"no Docker engine: {problem}; to run these tests, {docker_support.ENABLE}")


@pytest.fixture(scope="session")
def docker_images(docker_engine: None) -> DockerImages:
    """mcpfleet's images (base, gateway, demo), built by docker/build-images.sh when missing or out of date."""
    images = _images()
    if isinstance(images, str):
        pytest.fail(f"the images could not be built: {images}", pytrace=False)
    return images


@pytest.fixture
def docker_project() -> str:
    """A project name unique to this test (`t<pid>-<n>`); see `docker_support.docker_project`."""
    return docker_support.docker_project()


@pytest.fixture(autouse=True)
def no_leftover_docker_objects() -> Iterator[None]:
    """Fail a test that leaves behind a container (running or not), network or volume labelled
    app.kubernetes.io/managed-by=mcpfleet, or of a compose project it was given; then remove those that carry
    its `docker_project()` names (so label what a test creates with one, e.g. `mcpfleet.project`)."""
    if _engine_problem() is not None:
        yield
        return
    before = present()
    docker_support.issued.clear()
    yield
    found = leftovers(before)
    docker_support.issued.clear()
    if not found:
        return
    # Removed: what carries this process's project names. Kept: objects without one, which could belong to a
    # concurrent test session; they were there "before" the next test, so they fail this test only.
    removable = [thing for thing in found if ours(thing)]
    remove(removable)
    message = f"Docker objects left behind: {', '.join(map(str, found))}"
    if kept := [str(thing) for thing in found if thing not in removable]:
        message += f"; not removed, as they carry no docker_project() name: {', '.join(kept)}"
    pytest.fail(message, pytrace=False)
