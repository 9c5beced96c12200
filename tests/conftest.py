"""Shared fixtures: the backends every core test runs on, and the fake connector."""

from __future__ import annotations

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
