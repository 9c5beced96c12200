"""Through a real PgBouncer in transaction mode, with five server connections."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from asyncpool import AsyncPool
from asyncpool.asyncpg import AsyncpgConnector, create_pool

from ._helpers import backend_pids

pytestmark = [pytest.mark.postgres, pytest.mark.pgbouncer]

TASKS = 200
ROUNDS = 25

#: The errors asyncpg's statement cache meets behind transaction pooling: a
#: named statement prepared on one server connection, used on another.
PREPARED_STATEMENT_ERRORS = (
    asyncpg.InvalidSQLStatementNameError,
    asyncpg.DuplicatePreparedStatementError,
)


async def _run_load(pool: AsyncPool[Any]) -> list[BaseException]:
    """``TASKS`` concurrent tasks, each running parameterised queries
    ``ROUNDS`` times and checking every answer; returns the errors."""
    errors: list[BaseException] = []

    async def task(i: int) -> None:
        for j in range(ROUNDS):
            try:
                async with pool.acquire() as conn:
                    if j % 5 == 4:
                        async with conn.transaction():
                            value = await conn.fetchval("SELECT $1::int * 1000 + $2::int", i, j)
                            row = await conn.fetchrow("SELECT $1::text AS tag, $2::int + 1 AS next", f"t{i}", j)
                        assert row is not None
                        assert (row["tag"], row["next"]) == (f"t{i}", j + 1)
                    else:
                        value = await conn.fetchval(f"SELECT $1::int * 1000 + $2::int + {j % 3} - {j % 3}", i, j)
                    assert value == i * 1000 + j
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                errors.append(exc)

    await asyncio.gather(*(task(i) for i in range(TASKS)))
    return errors


@pytest.mark.asyncio
async def test_two_hundred_tasks_through_twenty_clients_into_five_server_connections(
    pgbouncer_dsn: str, pg_dsn: str, app_name: str
) -> None:
    connector = AsyncpgConnector(pgbouncer_dsn, pgbouncer=True, server_settings={"application_name": app_name})
    assert connector.connect_kwargs["statement_cache_size"] == 0
    async with AsyncPool(connector, min_size=20, max_size=20, timeout=60) as pool:
        await pool.open(wait=True)
        errors = await _run_load(pool)
        assert errors == []
        stats = pool.stats()
        assert stats.acquired >= TASKS * ROUNDS
        assert stats.destroyed == 0
        admin = await asyncpg.connect(pg_dsn)
        try:
            # PgBouncer passes application_name on to the server
            # connections it lends: at most five of them served all this.
            assert 1 <= len(await backend_pids(admin, app_name)) <= 5
        finally:
            await admin.close()


@pytest.mark.asyncio
async def test_without_the_option_asyncpgs_statement_cache_breaks(pgbouncer_dsn: str) -> None:
    # What pgbouncer=True prevents: asyncpg prepares named statements and
    # reuses them later, on whichever server connection PgBouncer picks.
    async with AsyncPool(AsyncpgConnector(pgbouncer_dsn), min_size=20, max_size=20, timeout=60) as pool:
        await pool.open(wait=True)
        errors = await _run_load(pool)
    assert errors
    assert any(isinstance(exc, PREPARED_STATEMENT_ERRORS) for exc in errors)


@pytest.mark.asyncio
async def test_create_pool_behind_pgbouncer(pgbouncer_dsn: str) -> None:
    async with create_pool(pgbouncer_dsn, pgbouncer=True, min_size=2, max_size=4) as pool:
        assert pool.connector.reset_policy == "rollback"
        values = await asyncio.gather(*(pool.fetchval("SELECT $1::int + 1", i) for i in range(100)))
        assert values == [i + 1 for i in range(100)]
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")  # left open: rolled back on release
        assert await pool.fetchval("SELECT 1") == 1


def test_pgbouncer_option_needs_the_statement_cache_off(pg_dsn: str) -> None:
    with pytest.raises(ValueError, match="statement_cache_size=0"):
        AsyncpgConnector(pg_dsn, pgbouncer=True, statement_cache_size=100)
