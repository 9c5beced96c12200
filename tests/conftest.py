"""Shared fixtures: the backends every core test runs on, and the fake connector."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from .fakes import FakeConnector

_BACKENDS: list[Any] = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(
        ("asyncio", {"use_uvloop": True}),
        id="uvloop",
        marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not available on Windows"),
    ),
    pytest.param(("trio", {}), id="trio"),
]
if sys.version_info >= (3, 12):

    def _eager_loop() -> asyncio.AbstractEventLoop:
        # Tasks run their first step inside ``create_task``: the pool must
        # not depend on a new task waiting for the next loop turn.
        loop = asyncio.new_event_loop()
        loop.set_task_factory(asyncio.eager_task_factory)
        return loop

    _BACKENDS.insert(1, pytest.param(("asyncio", {"loop_factory": _eager_loop}), id="eager"))


@pytest.fixture(params=_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Every ``@pytest.mark.anyio`` test runs on asyncio, uvloop and trio."""
    return request.param


@pytest.fixture
def backend_name(anyio_backend: Any) -> str:
    return str(anyio_backend[0])


@pytest.fixture
def connector() -> FakeConnector:
    return FakeConnector(seed=1234)
