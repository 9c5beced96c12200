"""The type names the adapter's modules share (for type checkers only)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import TypeAlias

    import asyncpg

    Connection: TypeAlias = asyncpg.Connection[Any]
    ConnHook: TypeAlias = Callable[[Connection], Awaitable[object]]
