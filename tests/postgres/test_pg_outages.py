"""The server goes away: down when the pool opens, and restarted under load."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from asyncpool import AsyncPool, PoolTimeout
from asyncpool.asyncpg import AsyncpgConnector, create_pool

from ._helpers import LocalServer, backend_pids, free_port, unavailable, wait_for_backends, with_port

pytestmark = [pytest.mark.postgres]

#: What a caller whose query was in flight may see when the server stops.
#: ``InternalClientError`` is asyncpg's word for a connection that received
#: the server's goodbye (a FATAL error) but not yet the end of the stream: a
#: window of one event-loop turn in which it cannot be told from a live one
#: without I/O. asyncpg aborts the connection on that error, so it is then
#: replaced like any other broken one.
CONNECTION_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


@pytest.mark.asyncio
async def test_server_down_at_open_raises_pool_timeout_caused_by_the_connect_error(pg_dsn: str) -> None:
    down = with_port(pg_dsn, free_port())  # nothing listens there
    pool = AsyncPool(AsyncpgConnector(down), min_size=2, max_size=2, timeout=0.5)
    try:
        with pytest.raises(PoolTimeout) as caught:
            await pool.open(wait=True)
        assert isinstance(caught.value.__cause__, OSError)
        assert pool.stats().connect_errors >= 2
    finally:
        await pool.close()
    # The same through create_pool: ``await`` raises instead of hanging.
    with pytest.raises(PoolTimeout) as caught:
        await create_pool(down, min_size=1, acquire_timeout=0.5)
    assert isinstance(caught.value.__cause__, OSError)


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("asyncio", {}), id="asyncio"), pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")],
)
async def test_server_restart_under_load_recovers_without_leaking_backends(pg_dsn: str, app_name: str) -> None:
    server = LocalServer.for_dsn(pg_dsn)
    if server is None:
        unavailable("the test server is not a local pg_ctlcluster cluster; cannot restart it")
        return
    connector = AsyncpgConnector(pg_dsn, server_settings={"application_name": app_name})
    pool = AsyncPool(connector, min_size=4, max_size=4, timeout=0.5)
    loop = asyncio.get_running_loop()
    successes: list[float] = []
    timeouts: list[PoolTimeout] = []
    broken: list[BaseException] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                async with pool.acquire() as conn:
                    assert await conn.fetchval("SELECT 1") == 1
                successes.append(loop.time())
            except PoolTimeout as exc:
                timeouts.append(exc)
            except CONNECTION_ERRORS as exc:
                broken.append(exc)
            await asyncio.sleep(0.005)

    admin: asyncpg.Connection[Any] | None = None
    try:
        await pool.open(wait=True)
        clients = [asyncio.create_task(client()) for _ in range(8)]
        try:
            await asyncio.sleep(0.5)
            assert successes, "no query succeeded before the restart"
            try:
                await server.stop()
                down_since = loop.time()
                await asyncio.sleep(1.5)
                done_while_down = [t for t in successes if t > down_since + 0.1]
                assert not done_while_down, "queries succeeded while the server was down"
            finally:
                await server.ensure_started(pg_dsn)
            back_at = loop.time()
            deadline = back_at + 10.0
            while not any(t > back_at for t in successes):
                assert loop.time() < deadline, f"no recovery within 10 s; {pool!r}"
                await asyncio.sleep(0.02)
            recovered_in = min(t for t in successes if t > back_at) - back_at
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.gather(*clients)
        # Callers waiting during the outage got PoolTimeout, saying why.
        assert timeouts
        causes = [exc.__cause__ for exc in timeouts if exc.__cause__ is not None]
        assert causes, "no PoolTimeout carried the connect error as its cause"
        assert all(isinstance(cause, (OSError, asyncpg.PostgresError)) for cause in causes)
        assert recovered_in < 6.0, f"recovered only {recovered_in:.1f} s after the server was back"
        admin = await asyncpg.connect(pg_dsn)
        pids = await backend_pids(admin, app_name)
        stats = pool.stats()
        # No leaked backends: one per resource the pool holds, give or take
        # a connect still in flight (its backend may or may not exist yet;
        # after the outage's failures it may still be backing off).
        assert stats.idle + stats.in_use <= len(pids) <= stats.size <= 4, (pids, stats)
        await pool.close()
        await wait_for_backends(admin, app_name, 0)
    finally:
        await pool.close()
        if admin is not None:
            await admin.close()


@pytest.mark.asyncio
async def test_a_connection_broken_in_a_lease_is_not_kept(pg_dsn: str, app_name: str) -> None:
    async with AsyncPool(AsyncpgConnector(pg_dsn, server_settings={"application_name": app_name}), max_size=1) as pool:
        admin: asyncpg.Connection[Any] = await asyncpg.connect(pg_dsn)
        try:

            async def killed_under_the_caller() -> None:
                async with pool.acquire() as conn:
                    await admin.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
                    await asyncio.sleep(0.1)
                    await conn.fetchval("SELECT 1")

            with pytest.raises(CONNECTION_ERRORS):
                await killed_under_the_caller()
            started = time.monotonic()
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1
            assert time.monotonic() - started < 2
            assert pool.stats().destroyed == 1
        finally:
            await admin.close()
