"""An asyncpg connector that records what the pool did with it.

Used by the fault scenarios and the soak: each connect attempt's time, and
each close per connection (a connection closed twice, or never, is a pool's
failure). It imports nothing of pytest, so the soak can run without it.
"""

from __future__ import annotations

import time
from typing import Any

from asyncpool.asyncpg import AsyncpgConnector

__all__ = ["CountingConnector"]


class CountingConnector:
    """Passes everything on to an ``AsyncpgConnector(dsn, **kwargs)``,
    keeping count; the pool finds the same optional capabilities on it."""

    def __init__(self, dsn: str, **kwargs: Any) -> None:
        self._inner = AsyncpgConnector(dsn, **kwargs)
        #: When each connect attempt started.
        self.attempts: list[float] = []
        #: Closes by connection id, the connection kept alive so no id is
        #: reused by a later one.
        self.closes: dict[int, tuple[Any, int]] = {}
        # Bound methods: the pool looks these up as attributes.
        self.background_reset = self._inner.background_reset
        self.is_closed = self._inner.is_closed
        self.idle_limit = self._inner.idle_limit
        self.watch = self._inner.watch
        self.validate = self._inner.validate
        self.reset = self._inner.reset

    async def connect(self) -> Any:
        self.attempts.append(time.monotonic())
        conn = await self._inner.connect()
        self.closes[id(conn)] = (conn, 0)
        return conn

    async def close(self, conn: Any) -> None:
        _conn, count = self.closes.get(id(conn), (conn, 0))
        self.closes[id(conn)] = (conn, count + 1)
        await self._inner.close(conn)

    def closed_twice(self) -> int:
        return sum(1 for _conn, count in self.closes.values() if count > 1)

    def assert_all_closed_once(self) -> None:
        wrong = [count for _conn, count in self.closes.values() if count != 1]
        assert not wrong, f"connections not closed exactly once: {wrong}"
