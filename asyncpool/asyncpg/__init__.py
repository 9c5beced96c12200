"""PostgreSQL through asyncpg: a connector, and a drop-in ``create_pool``.

:class:`AsyncpgConnector` teaches :class:`asyncpool.AsyncPool` how to open,
check, clean and close ``asyncpg`` connections::

    pool = AsyncPool(AsyncpgConnector("postgresql://app@db/app"), max_size=20)
    async with pool, pool.acquire() as conn:
        await conn.fetch("SELECT ...")

:func:`create_pool` takes ``asyncpg.create_pool``'s arguments and returns a
:class:`Pool` with ``asyncpg.Pool``'s methods, so existing code switches by
changing one import.

What "clean" means is the reset policy, chosen per connector:

``"full"`` (the default)
    Roll back an open transaction, then drop all session state in one round
    trip: ``SET SESSION AUTHORIZATION DEFAULT``, ``RESET ROLE``,
    ``RESET ALL``, ``CLOSE ALL``, ``UNLISTEN *``,
    ``pg_advisory_unlock_all()``, ``DISCARD TEMP``, ``DISCARD SEQUENCES``,
    and, after a lease that sent SQL mentioning ``PREPARE``, a
    ``DEALLOCATE`` of each statement made with SQL ``PREPARE``.
    That is ``DISCARD ALL`` without ``DEALLOCATE ALL`` and
    ``DISCARD PLANS``, which would throw away asyncpg's statement cache (and
    ``DISCARD ALL`` cannot run in the implicit transaction of a
    multi-statement query anyway). It costs a round trip, so the pool runs
    it in the background: the releasing task does not wait for it.
    What an ``init`` hook set up (``SET ROLE``, ``SET SESSION
    AUTHORIZATION``, ``SET``) is put back in the same round trip: the
    connection returns to its state right after connect and ``init``.
``"rollback"``
    Only roll back an open transaction. asyncpg knows the transaction state
    locally, so releasing an idle connection costs no round trip at all;
    but a ``SET``, ``SET ROLE``, temporary table, advisory lock or
    ``LISTEN`` made by one borrower is seen by the next.

Behind PgBouncer in transaction mode (``pgbouncer=True``) session state does
not belong to the client, so only the rollback is done, and asyncpg's
statement cache is off (``statement_cache_size=0``, asyncpg's documented
setting for PgBouncer): it then uses unnamed statements only, so no named
prepared statement outlives a transaction.

A lease whose task was cancelled while a query was in flight leaves asyncpg
waiting for the server to acknowledge the cancellation. Before such a
connection is lent again, reset waits a short, bounded time for that to
settle and then proves the connection works with a round trip; if it does
not settle, the connection is terminated and replaced.
"""

from __future__ import annotations

try:
    import asyncpg  # noqa: F401 - first, so a missing extra is named
except ImportError as _exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "asyncpool.asyncpg needs asyncpg; install it with: pip install 'asyncpool-core[asyncpg]'"
    ) from _exc

from ._connector import AsyncpgConnector
from ._create import create_pool
from ._errors import PoolClosedError, PoolInterfaceError
from ._facade import Pool, PoolAcquireContext
from ._idle import IdleTimeouts, idle_margin
from ._secrets import mask_dsn
from ._session import SessionEndedError
from ._sql import FULL_RESET_QUERY

__all__ = [
    "FULL_RESET_QUERY",
    "AsyncpgConnector",
    "IdleTimeouts",
    "Pool",
    "PoolAcquireContext",
    "PoolClosedError",
    "PoolInterfaceError",
    "SessionEndedError",
    "create_pool",
    "idle_margin",
    "mask_dsn",
]
