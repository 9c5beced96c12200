"""The server ends a session: never lend what it ended, and say so truthfully.

A server that ends a session (``pg_terminate_backend``, ``idle_session_timeout``,
``idle_in_transaction_session_timeout``, a shutdown) sends a FATAL error and
only then closes the socket. Between the two, asyncpg cannot tell the
connection is dead: it takes the unexpected error for a protocol fault, and
its next query fails with ``InternalClientError``. The fault proxy holds back
the close (``hold_eof``) to make that window as long as a test needs.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from asyncpool import AsyncPool
from asyncpool.asyncpg import AsyncpgConnector, SessionEndedError, create_pool

from ..faultproxy import FaultProxy
from ._helpers import wait_for_backends, wait_until

if TYPE_CHECKING:
    from typing import TypeAlias

    Admin: TypeAlias = asyncpg.Connection[Any]

pytestmark = [pytest.mark.postgres]


async def _terminate(admin: Admin, conn: Any) -> None:
    """End ``conn``'s session from the server side, as an operator would."""
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())


async def _fatal_delivered(admin: Admin, pid: int) -> None:
    """Wait until the backend ``pid`` has exited (so its FATAL is sent)."""
    for _ in range(500):
        if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            await asyncio.sleep(0.05)  # and through the proxy to the client
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} did not exit")


@pytest.mark.asyncio
async def test_idle_connections_whose_backends_were_terminated_are_never_lent(
    pg_dsn: str, app_name: str, admin: Admin
) -> None:
    # The race as it happens: terminate the backends of idle connections,
    # give the server's messages 0-2 ms, then lease and query at once.
    rng = random.Random(11)
    connector = AsyncpgConnector(pg_dsn, server_settings={"application_name": app_name})
    internal: list[BaseException] = []
    async with AsyncPool(connector, min_size=4, max_size=4, timeout=5, validate_after=None) as pool:
        for _ in range(15):
            await pool.open(wait=True)
            await wait_until(lambda: pool.stats().idle == 4, what="four idle connections")
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", app_name
            )
            await asyncio.sleep(rng.uniform(0, 0.002))
            for _ in range(4):
                try:
                    async with pool.acquire() as conn:
                        await conn.fetchval("SELECT 1")
                except asyncpg.InternalClientError as exc:
                    internal.append(exc)
                except asyncpg.ConnectionDoesNotExistError:
                    pass  # ended while the query was in flight: the truth
    assert internal == []


@pytest.mark.asyncio
@pytest.mark.parametrize("validate_after", [None, 0.05], ids=["not-due-for-validation", "due-for-validation"])
async def test_a_connection_whose_session_ended_while_idle_is_not_lent(
    proxied_dsn: str, fault_proxy: FaultProxy, admin: Admin, validate_after: float | None
) -> None:
    async with AsyncPool(AsyncpgConnector(proxied_dsn), max_size=1, validate_after=validate_after) as pool:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
        fault_proxy.hold_eof()
        await _terminate(admin, conn)
        await _fatal_delivered(admin, pid)
        await asyncio.sleep(0.06)  # past validate_after, where there is one
        async with pool.acquire() as fresh:
            assert await fresh.fetchval("SELECT 1") == 1
            assert fresh is not conn
        assert pool.stats().destroyed == 1
        fault_proxy.release_eof()


@pytest.mark.asyncio
async def test_a_session_ended_under_its_borrower_raises_connection_does_not_exist_with_the_reason(
    proxied_dsn: str, fault_proxy: FaultProxy, admin: Admin
) -> None:
    async with AsyncPool(AsyncpgConnector(proxied_dsn), max_size=1) as pool:
        with pytest.raises(asyncpg.ConnectionDoesNotExistError) as caught:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
                fault_proxy.hold_eof()
                await _terminate(admin, conn)
                await _fatal_delivered(admin, conn.get_server_pid())
                await conn.fetchval("SELECT 1")
        assert isinstance(caught.value, SessionEndedError)
        assert not caught.value.query_sent
        assert "terminating connection due to administrator command" in str(caught.value)
        assert isinstance(caught.value.__cause__, asyncpg.AdminShutdownError)
        fault_proxy.release_eof()
        # Not lent again.
        async with pool.acquire() as fresh:
            assert fresh is not conn
            assert await fresh.fetchval("SELECT 1") == 1


@pytest.mark.asyncio
async def test_a_session_ended_before_the_reset_is_retired_without_troubling_anyone(
    proxied_dsn: str, fault_proxy: FaultProxy, admin: Admin
) -> None:
    async with AsyncPool(AsyncpgConnector(proxied_dsn), max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute("SET work_mem = '2MB'")  # so the reset has work to do
            fault_proxy.hold_eof()
            await _terminate(admin, conn)
            await _fatal_delivered(admin, conn.get_server_pid())
        async with pool.acquire() as fresh:
            assert fresh is not conn
            assert await fresh.fetchval("SHOW work_mem") != "2MB"
        fault_proxy.release_eof()


@pytest.mark.asyncio
async def test_a_connection_idle_past_the_servers_idle_session_timeout_is_not_lent(
    proxied_dsn: str, fault_proxy: FaultProxy
) -> None:
    # The server ends sessions idle for 150 ms; the close is held back.
    connector = AsyncpgConnector(proxied_dsn, server_settings={"idle_session_timeout": "150"})
    fault_proxy.hold_eof()
    async with AsyncPool(connector, max_size=1, validate_after=None, health_check_interval=None) as pool:
        for _ in range(3):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1
            await asyncio.sleep(0.3)
        assert pool.stats().created >= 3
    fault_proxy.release_eof()


@pytest.mark.asyncio
async def test_a_connection_is_retired_before_the_servers_idle_session_timeout_would_end_it(
    pg_dsn: str, app_name: str, admin: Admin
) -> None:
    # idle_session_timeout = 400 ms: a connection idle 330 ms is retired
    # rather than lent (the server has not ended it yet, but a lease
    # starting now could lose it any moment); one idle 100 ms is reused.
    connector = AsyncpgConnector(pg_dsn, server_settings={"application_name": app_name, "idle_session_timeout": "400"})
    async with AsyncPool(connector, max_size=1, validate_after=None, health_check_interval=None) as pool:
        async with pool.acquire() as first:
            pass
        await asyncio.sleep(0.1)
        async with pool.acquire() as conn:
            assert conn is first
        await asyncio.sleep(0.33)
        async with pool.acquire() as conn:
            assert conn is not first
            assert await conn.fetchval("SELECT 1") == 1
        stats = pool.stats()
        assert (stats.created, stats.destroyed) == (2, 1), stats
    await wait_for_backends(admin, app_name, 0)


@pytest.mark.asyncio
async def test_create_pool_one_shot_queries_retry_once_when_the_session_ended_before_the_query(
    proxied_dsn: str, fault_proxy: FaultProxy, admin: Admin
) -> None:
    # ``setup`` runs between the lend and the query: there the session ends
    # (the server's goodbye arrives, its close is held back), so the query
    # never leaves the client and is safe to run on another connection.
    ended: list[int] = []

    async def end_the_first_session(conn: Any) -> None:
        if not ended:
            ended.append(conn.get_server_pid())
            fault_proxy.hold_eof()
            await _terminate(admin, conn)
            await _fatal_delivered(admin, ended[0])

    async with create_pool(proxied_dsn, min_size=1, max_size=1, setup=end_the_first_session) as pool:
        for method in ("fetchval", "fetchrow", "fetch", "execute"):
            ended.clear()
            result = await getattr(pool, method)("SELECT 1")
            assert result is not None, method
            assert ended, "the session was ended in setup"
            fault_proxy.release_eof()
        assert pool.stats().destroyed == 4


@pytest.mark.asyncio
@pytest.mark.parametrize("piece", [1, 3, 7])
async def test_the_servers_goodbye_is_seen_however_its_bytes_are_split(
    proxied_dsn: str, fault_proxy: FaultProxy, admin: Admin, piece: int
) -> None:
    async with AsyncPool(AsyncpgConnector(proxied_dsn), max_size=1, validate_after=None) as pool:
        fault_proxy.fragment(piece)
        async with pool.acquire() as conn:
            # Responses in pieces are read as usual.
            assert await conn.fetchval("SELECT repeat('x', 300)") == "x" * 300
            pid = conn.get_server_pid()
        fault_proxy.hold_eof()
        await _terminate(admin, conn)
        await _fatal_delivered(admin, pid)
        await asyncio.sleep(0.3)  # the goodbye arrives a few bytes a millisecond
        assert conn.is_closed()
        assert pool.stats().idle == 0, "retired the moment the goodbye was read"
        fault_proxy.fragment(None)
        async with pool.acquire() as fresh:
            assert fresh is not conn
        fault_proxy.release_eof()


def _fake_goodbye() -> bytes:
    """A ReadyForQuery followed by a FATAL ErrorResponse, as bytes."""
    body = b"SFATAL\x00VFATAL\x00C57P01\x00Mterminating connection due to administrator command\x00\x00"
    return b"Z\x00\x00\x00\x05I" + b"E" + (len(body) + 4).to_bytes(4, "big") + body


@pytest.mark.asyncio
@pytest.mark.parametrize("piece", [None, 5, 64])
async def test_result_data_that_looks_like_a_goodbye_is_not_taken_for_one(
    proxied_dsn: str, fault_proxy: FaultProxy, piece: int | None
) -> None:
    # The goodbye's bytes inside a bytea value, arriving whole or in pieces
    # whose boundaries do not fall right after them. (Reads that end exactly
    # after them, as one-byte pieces do, are the one case the watch takes
    # for the session's end: see the ``_session`` module docstring.)
    payload = _fake_goodbye() * 3 + b"tail"
    async with AsyncPool(AsyncpgConnector(proxied_dsn), max_size=1) as pool:
        fault_proxy.fragment(piece)
        async with pool.acquire() as conn:
            for _ in range(3):
                assert await conn.fetchval("SELECT $1::bytea", payload) == payload
            assert not conn.is_closed()
        assert pool.stats().destroyed == 0
