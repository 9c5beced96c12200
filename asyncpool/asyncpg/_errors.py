"""The adapter's own exceptions (``SessionEndedError`` lives with the session
watch that raises it)."""

from __future__ import annotations

import asyncpg

from .._errors import PoolClosed, PoolError


class RetireConnection(Exception):
    """Raised by reset: this connection must be closed, not lent again."""


class PoolInterfaceError(PoolError, asyncpg.InterfaceError):
    """``create_pool``'s pool used wrongly: releasing a connection it did not
    lend, or using it before (or while) it is opened. An
    ``asyncpg.InterfaceError``, as asyncpg raises in the same situations, so
    existing ``except`` clauses keep working; and a :class:`PoolError`."""


class PoolClosedError(PoolInterfaceError, PoolClosed):
    """``create_pool``'s pool is closed: a :class:`PoolClosed` and an
    ``asyncpg.InterfaceError`` ("pool is closed"), as asyncpg raises."""
