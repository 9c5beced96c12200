"""What ``create_pool``'s ``acquire()`` lends: asyncpg's own
``PoolConnectionProxy`` around the connection, detached when it is released.

After release the proxy raises ``asyncpg.InterfaceError`` ("connection has
been released back to the pool") instead of running on a connection that
another task may hold by then; a stale second release is recognised and
ignored. Being asyncpg's class, it has every public ``Connection`` method
with its signature, ``isinstance(proxy, asyncpg.Connection)`` holds, and
code that names ``asyncpg.pool.PoolConnectionProxy`` keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

from asyncpg.pool import PoolConnectionProxy

if TYPE_CHECKING:
    from typing import TypeAlias

    from ._facade import Pool
    from ._types import Connection

    Proxy: TypeAlias = PoolConnectionProxy[Any]

__all__ = ["Holder", "PoolConnectionProxy", "lend"]


@final
class Holder:
    """A pool's proxies' ``_holder``. asyncpg's connection reaches through it
    (``_holder._pool``) when a schema change makes it drop the statement or
    type cache of every connection of its pool."""

    __slots__ = ("_pool",)

    def __init__(self, pool: Pool) -> None:
        self._pool = pool


def lend(holder: Holder, conn: Connection) -> Proxy:
    """A proxy of ``conn``, which it stays attached to until ``_detach()``."""
    proxy: Any = PoolConnectionProxy(holder, conn)  # type: ignore[arg-type]
    return proxy  # type: ignore[no-any-return]
