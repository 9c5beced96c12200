"""``AsyncpgConnector`` under ``AsyncPool``: leases, validation, reset
policies, cancellation mid-query, and backends that die."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from asyncpool import AsyncPool, PoolTimeout
from asyncpool.asyncpg import AsyncpgConnector

from ..faultproxy import FaultProxy
from ._helpers import (
    backend_pids,
    internals,
    loop_errors,
    wait_for_backends,
    wait_until,
)

pytestmark = [pytest.mark.postgres]

if TYPE_CHECKING:
    from typing import TypeAlias

    Admin: TypeAlias = asyncpg.Connection[Any]
MakeConnector = Callable[..., AsyncpgConnector]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextlib.asynccontextmanager
async def _temporary_role(admin: Admin, name: str) -> AsyncIterator[None]:
    """A NOLOGIN role named ``name`` (any characters) for the block's duration."""
    quoted = _quoted(name)
    await admin.execute(f"CREATE ROLE {quoted} NOLOGIN")
    try:
        yield
    finally:
        await admin.execute(f"DROP ROLE {quoted}")


#: What a caller may see when the server side of its connection goes away.
CONNECTION_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


@pytest.mark.asyncio
async def test_queries_and_transactions_through_leases(make_connector: MakeConnector, admin: Admin) -> None:
    table = f"asyncpool_lease_{random.randrange(1 << 30)}"
    await admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, note text)")
    try:
        async with AsyncPool(make_connector(), max_size=3) as pool:
            async with pool.acquire() as conn, conn.transaction():
                await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2)", [(1, "a"), (2, "b")])

            async def insert_then_fail() -> None:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (3, 'rolled back')")
                    raise ZeroDivisionError

            with pytest.raises(ZeroDivisionError):
                await insert_then_fail()
            async with pool.acquire() as conn:
                rows = await conn.fetch(f"SELECT id, note FROM {table} ORDER BY id")
                assert [tuple(row) for row in rows] == [(1, "a"), (2, "b")]
                assert await conn.fetchval("SELECT $1::int * 2", 21) == 42
            # Errors from the server pass through unchanged; the connection stays.
            async with pool.acquire() as conn:
                with pytest.raises(asyncpg.UndefinedTableError):
                    await conn.execute("SELECT * FROM asyncpool_no_such_table")
            assert pool.stats().destroyed == 0
    finally:
        await admin.execute(f"DROP TABLE {table}")


@pytest.mark.asyncio
async def test_an_open_transaction_is_rolled_back_on_release(make_connector: MakeConnector) -> None:
    for policy in ("full", "rollback"):
        async with AsyncPool(make_connector(reset=policy), max_size=1) as pool:
            async with pool.acquire() as conn:
                await conn.execute("BEGIN")
                await conn.execute("CREATE TEMP TABLE asyncpool_tx (x int) ON COMMIT DROP")
            async with pool.acquire() as conn:
                assert not conn.is_in_transaction()
                assert await conn.fetchval("SELECT to_regclass('asyncpool_tx')") is None
                forgotten = conn.transaction()
                await forgotten.start()  # a transaction object nobody finishes
                await conn.execute("CREATE TEMP TABLE asyncpool_tx (x int) ON COMMIT DROP")
            async with pool.acquire() as conn:
                assert not conn.is_in_transaction()
                # A fresh top-level transaction, not a savepoint in a stale one.
                async with conn.transaction():
                    assert await conn.fetchval("SELECT to_regclass('asyncpool_tx')") is None


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["full", "rollback"])
async def test_back_to_back_leases_keep_one_connection(make_connector: MakeConnector, policy: str) -> None:
    async with AsyncPool(make_connector(reset=policy), max_size=1) as pool:
        seen = set()
        for _ in range(5):
            conn = await pool.acquire()
            seen.add(id(conn))
            await pool.release(conn)
        for _ in range(5):
            async with pool.acquire() as conn:
                seen.add(id(conn))
        assert len(seen) == 1
        assert pool.stats().destroyed == 0


@pytest.mark.asyncio
async def test_validate_fails_without_a_round_trip_when_closed(make_connector: MakeConnector) -> None:
    connector = make_connector()
    conn = await connector.connect()
    try:
        assert await connector.validate(conn)
        conn.terminate()
        assert connector.is_closed(conn)
        check = connector.validate(conn)
        # Answered from local state: done at the first step, no I/O awaited.
        with pytest.raises(StopIteration) as done:
            check.send(None)
        assert done.value.value is False
    finally:
        await connector.close(conn)


@pytest.mark.asyncio
async def test_validate_gives_up_on_a_server_that_stopped_answering(proxied_dsn: str, fault_proxy: FaultProxy) -> None:
    connector = AsyncpgConnector(proxied_dsn, validate_timeout=0.3)
    conn = await connector.connect()
    fault_proxy.stall()  # a half-open TCP connection: nothing comes back
    started = time.monotonic()
    assert await connector.validate(conn) is False
    assert time.monotonic() - started < 2.0
    assert conn.is_closed()  # terminated, so closing it cannot hang either
    await connector.close(conn)


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["full", "rollback"])
async def test_a_reset_on_a_server_that_stopped_answering_is_bounded(
    proxied_dsn: str, fault_proxy: FaultProxy, policy: str
) -> None:
    connector = AsyncpgConnector(proxied_dsn, reset=policy, reset_timeout=0.4)
    async with AsyncPool(connector, max_size=1, timeout=5, background_reset=False) as pool:
        conn = await pool.acquire()
        if policy == "rollback":
            await conn.execute("BEGIN")  # so that the reset has a round trip to make
        fault_proxy.stall()  # a half-open TCP connection: the reset never hears back
        started = time.monotonic()
        await pool.release(conn)
        took = time.monotonic() - started
        assert 0.35 < took < 2.0, took  # reset_timeout, checked every reset_timeout / 2
        assert conn.is_closed()  # terminated, and retired
        stats = pool.stats()
        assert (stats.destroyed, stats.in_use, stats.idle) == (1, 0, 0), stats
        fault_proxy.resume()
        async with pool.acquire() as fresh:
            assert fresh is not conn
            assert await fresh.fetchval("SELECT 1") == 1


@pytest.mark.asyncio
async def test_default_reset_leaves_no_session_state_behind(make_connector: MakeConnector, admin: Admin) -> None:
    role = f"asyncpool_role_{random.randrange(1 << 30)}"
    async with _temporary_role(admin, role):
        async with AsyncPool(make_connector(), max_size=1) as pool:
            async with pool.acquire() as conn:
                pid = conn.get_server_pid()
                default_path = await conn.fetchval("SHOW search_path")
                await conn.execute(f"SET ROLE {role}")
                await conn.execute("SET search_path TO pg_catalog")
                await conn.execute("SET statement_timeout = '1234s'")
                await conn.execute("SELECT set_config('asyncpool.custom', 'leaked', false)")
                await conn.execute("CREATE TEMP TABLE asyncpool_leak (x int)")
                await conn.execute("SELECT pg_advisory_lock(424242)")
                await conn.execute("LISTEN asyncpool_channel")
                await conn.add_listener("asyncpool_other", lambda *args: None)
                await conn.execute("BEGIN; DECLARE asyncpool_cursor CURSOR WITH HOLD FOR SELECT 1; COMMIT")
                assert await conn.fetchval("SELECT current_user") == role
            async with pool.acquire() as conn:
                assert conn.get_server_pid() == pid  # the same session, cleaned
                assert await conn.fetchval("SELECT current_user") == await conn.fetchval("SELECT session_user")
                assert await conn.fetchval("SELECT current_user") != role
                assert await conn.fetchval("SHOW search_path") == default_path
                assert await conn.fetchval("SHOW statement_timeout") == "0"
                assert await conn.fetchval("SELECT current_setting('asyncpool.custom', true)") in (None, "")
                assert await conn.fetchval("SELECT to_regclass('pg_temp.asyncpool_leak')") is None
                assert await conn.fetchval("SELECT count(*) FROM pg_cursors WHERE name = 'asyncpool_cursor'") == 0
                assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
                assert not internals(conn)._listeners
            held = await admin.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1", pid)
            assert held == 0
            assert await admin.fetchval("SELECT pg_try_advisory_lock(424242)")
            await admin.execute("SELECT pg_advisory_unlock(424242)")


@pytest.mark.asyncio
async def test_full_reset_drops_sql_prepared_statements_but_keeps_asyncpgs_cache(make_connector: MakeConnector) -> None:
    async with AsyncPool(make_connector(), max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            await conn.fetchval("SELECT 41 + $1::int", 1)  # asyncpg's own, protocol-level
            await conn.execute("PREPARE asyncpool_s AS SELECT 1")
            await conn.execute('PREPARE "asyncpool odd ""name""" AS SELECT 2')
            cached = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql")
            assert cached >= 1
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid
            await conn.execute("PREPARE asyncpool_s AS SELECT 1")  # no DuplicatePreparedStatementError
            await conn.execute('PREPARE "asyncpool odd ""name""" AS SELECT 2')
            assert await conn.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql") >= cached
        async with pool.acquire() as conn:
            # Through the extended protocol, in another letter case.
            await conn.fetch("pRePaRe asyncpool_s AS SELECT 1")
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid
            assert await conn.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE from_sql") == 0


@pytest.mark.asyncio
async def test_full_reset_undoes_set_session_authorization(make_connector: MakeConnector, admin: Admin) -> None:
    role = f"asyncpool_auth_{random.randrange(1 << 30)}"
    async with _temporary_role(admin, role):
        async with AsyncPool(make_connector(), max_size=1) as pool:
            async with pool.acquire() as conn:
                login = await conn.fetchval("SELECT session_user")
                await conn.execute(f"SET SESSION AUTHORIZATION {role}")
                assert await conn.fetchval("SELECT session_user") == role
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT session_user") == login
                assert await conn.fetchval("SELECT current_user") == login


@pytest.mark.asyncio
async def test_full_reset_keeps_the_role_set_in_init_but_not_the_borrowers(
    make_connector: MakeConnector, admin: Admin
) -> None:
    suffix = random.randrange(1 << 30)
    # A name that needs quoting, so the restoring SET ROLE must quote it.
    init_role = f'asyncpool Init"Role {suffix}'
    other_role = f"asyncpool_other_{suffix}"
    quoted = _quoted(init_role)

    async def init(conn: asyncpg.Connection[Any]) -> None:
        await conn.execute(f"SET ROLE {quoted}")

    async with _temporary_role(admin, init_role), _temporary_role(admin, other_role):
        async with AsyncPool(make_connector(init=init), max_size=1) as pool:
            async with pool.acquire() as conn:
                pid = conn.get_server_pid()
                login = await conn.fetchval("SELECT session_user")
                assert await conn.fetchval("SELECT current_user") == init_role
                await conn.execute(f"SET ROLE {other_role}")
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT current_user") == init_role
                await conn.execute("RESET ROLE")
                assert await conn.fetchval("SELECT current_user") == login
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT current_user") == init_role
                await conn.execute(f"SET SESSION AUTHORIZATION {other_role}")
            async with pool.acquire() as conn:
                assert conn.get_server_pid() == pid  # the same session each time
                assert await conn.fetchval("SELECT session_user") == login
                assert await conn.fetchval("SELECT current_user") == init_role


@pytest.mark.asyncio
async def test_full_reset_keeps_the_session_authorization_set_in_init(
    make_connector: MakeConnector, admin: Admin
) -> None:
    role = f"asyncpool_sessauth_{random.randrange(1 << 30)}"

    async def init(conn: asyncpg.Connection[Any]) -> None:
        await conn.execute(f"SET SESSION AUTHORIZATION {role}")

    async with _temporary_role(admin, role):
        async with AsyncPool(make_connector(init=init), max_size=1) as pool:
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT session_user") == role
                # Allowed, because the login role is a superuser: a borrower
                # can always undo it, but the next one must not inherit that.
                await conn.execute("RESET SESSION AUTHORIZATION")
                assert await conn.fetchval("SELECT session_user") != role
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT session_user") == role
                assert await conn.fetchval("SELECT current_user") == role


@pytest.mark.asyncio
async def test_full_reset_keeps_settings_made_in_init_but_not_the_borrowers(make_connector: MakeConnector) -> None:
    # A quote and a backslash, so restoring it must quote the literal right.
    path = r""""it's a back\slash", public"""

    async def init(conn: asyncpg.Connection[Any]) -> None:
        await conn.execute(f"SET search_path TO {path}")
        await conn.execute("SET statement_timeout = '42s'")

    async with AsyncPool(make_connector(init=init), max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            assert await conn.fetchval("SHOW search_path") == path
            default_work_mem = await conn.fetchval("SHOW work_mem")
            await conn.execute("SET search_path TO pg_catalog")
            await conn.execute("SET statement_timeout = '1s'")
            await conn.execute("SET work_mem = '7MB'")
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid
            assert await conn.fetchval("SHOW search_path") == path
            assert await conn.fetchval("SHOW statement_timeout") == "42s"
            assert await conn.fetchval("SHOW work_mem") == default_work_mem


@pytest.mark.asyncio
async def test_rollback_policy_is_free_when_idle_and_keeps_session_state(make_connector: MakeConnector) -> None:
    connector = make_connector(reset="rollback")
    assert connector.background_reset is False
    async with AsyncPool(connector, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute("SET search_path TO pg_catalog")
            await conn.fetchval("SELECT 1")
            queries = internals(conn)._protocol.queries_count
            # An idle connection is reset without any I/O: done at the first step.
            with pytest.raises(StopIteration):
                connector.reset(conn).send(None)
            assert internals(conn)._protocol.queries_count == queries
        async with pool.acquire() as conn:
            # The trade-off: session settings are the next borrower's problem.
            assert await conn.fetchval("SHOW search_path") == "pg_catalog"


@pytest.mark.asyncio
async def test_background_reset_only_where_reset_costs_a_round_trip(make_connector: MakeConnector) -> None:
    async def custom(conn: asyncpg.Connection[Any]) -> None:
        return None

    assert make_connector().background_reset is True
    assert make_connector(reset="rollback").background_reset is False
    assert make_connector(reset=custom).background_reset is True
    behind_bouncer = make_connector(pgbouncer=True)
    assert behind_bouncer.reset_policy == "rollback"
    assert behind_bouncer.background_reset is False


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["full", "rollback"])
@pytest.mark.parametrize("style", ["async with", "await and release"])
async def test_a_lease_cancelled_mid_query_is_not_lent_busy(
    make_connector: MakeConnector, admin: Admin, app_name: str, policy: str, style: str
) -> None:
    async with AsyncPool(make_connector(reset=policy), max_size=1, timeout=5) as pool:
        started = asyncio.Event()

        async def body() -> None:
            if style == "async with":
                async with pool.acquire() as conn:
                    started.set()
                    await conn.execute("SELECT pg_sleep(30)")
            else:
                conn = await pool.acquire()
                try:
                    started.set()
                    await conn.execute("SELECT pg_sleep(30)")
                finally:
                    await pool.release(conn)

        task = asyncio.create_task(body())
        await started.wait()
        await asyncio.sleep(0.2)  # the query is running on the server now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        t0 = time.monotonic()
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 41 + 1") == 42
        assert time.monotonic() - t0 < 3
        # The server was told: the sleep is not still running.
        busy = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE '%pg_sleep(30)%'"
            " AND state = 'active'",
            app_name,
        )
        assert busy == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["full", "rollback"])
async def test_cancel_storm_never_hands_out_a_connection_in_mid_operation(
    make_connector: MakeConnector, policy: str
) -> None:
    rng = random.Random(1234)
    errors: list[BaseException] = []
    async with AsyncPool(make_connector(reset=policy), max_size=2, timeout=10) as pool:

        async def worker(i: int) -> None:
            try:
                async with pool.acquire() as conn:
                    if i % 3 == 0:
                        await conn.execute("SELECT pg_sleep(0.002)")
                    elif i % 3 == 1:
                        rows = await conn.fetch("SELECT generate_series(1, $1::int)", 500)
                        assert len(rows) == 500
                    else:
                        async with conn.transaction():
                            assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1
            except Exception as exc:
                errors.append(exc)

        for _ in range(150):
            tasks = [asyncio.create_task(worker(i)) for i in range(8)]
            await asyncio.sleep(rng.random() * 0.004)
            for task in tasks:
                if rng.random() < 0.5:
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert errors == []
        for _ in range(4):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1


@pytest.mark.asyncio
async def test_a_cancellation_that_never_settles_gets_the_connection_terminated(
    proxied_dsn: str, fault_proxy: FaultProxy
) -> None:
    connector = AsyncpgConnector(proxied_dsn, reset="rollback", validate_timeout=0.3)
    async with AsyncPool(connector, max_size=1, timeout=5) as pool:
        conn = await pool.acquire()
        query = asyncio.create_task(conn.execute("SELECT pg_sleep(0.5)"))
        await asyncio.sleep(0.1)
        fault_proxy.stall()  # neither the cancel request nor the reply gets through
        query.cancel()
        with pytest.raises(asyncio.CancelledError):
            await query
        started = time.monotonic()
        await pool.release(conn)
        assert time.monotonic() - started < 2.0
        assert conn.is_closed()
        fault_proxy.resume()
        async with pool.acquire() as fresh:
            assert fresh is not conn
            assert await fresh.fetchval("SELECT 1") == 1


@pytest.mark.asyncio
async def test_backend_killed_while_idle_is_replaced_without_the_caller_noticing(
    make_connector: MakeConnector, admin: Admin, app_name: str
) -> None:
    async with AsyncPool(make_connector(), min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            victim = conn
            pid = conn.get_server_pid()
        await wait_until(lambda: pool.stats().idle == 1, what="the reset to finish")
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        await wait_until(victim.is_closed, what="asyncpg to see the socket close")
        async with pool.acquire() as conn:
            assert conn is not victim
            assert await conn.fetchval("SELECT 1") == 1
            assert conn.get_server_pid() != pid
        assert pool.stats().health_failures == 1
        await wait_for_backends(admin, app_name, 1)


@pytest.mark.asyncio
async def test_backend_killed_while_leased_fails_only_that_caller(
    make_connector: MakeConnector, admin: Admin, app_name: str
) -> None:
    async with AsyncPool(make_connector(), min_size=2, max_size=2) as pool:
        await pool.open(wait=True)
        victim_started = asyncio.Event()
        victim_pid: list[int] = []

        async def victim() -> None:
            async with pool.acquire() as conn:
                victim_pid.append(conn.get_server_pid())
                victim_started.set()
                await conn.execute("SELECT pg_sleep(10)")

        task = asyncio.create_task(victim())
        await victim_started.wait()
        async with pool.acquire() as bystander:
            await asyncio.sleep(0.1)
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", victim_pid[0])
            with pytest.raises(CONNECTION_ERRORS):
                await task
            assert await bystander.fetchval("SELECT 1") == 1
        await wait_until(lambda: pool.stats().destroyed == 1, what="the broken connection to be discarded")
        pids = await wait_for_backends(admin, app_name, 2)
        assert victim_pid[0] not in pids
        for _ in range(3):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1


@pytest.mark.asyncio
async def test_close_leaves_no_backends(make_connector: MakeConnector, admin: Admin, app_name: str) -> None:
    pool = AsyncPool(make_connector(), min_size=3, max_size=5)
    await pool.open(wait=True)
    async with pool.acquire() as a, pool.acquire() as b:
        await a.fetchval("SELECT 1")
        await b.fetchval("SELECT 1")
    assert len(await backend_pids(admin, app_name)) == 3
    await pool.close()
    await wait_for_backends(admin, app_name, 0, timeout=2.0)


@pytest.mark.asyncio
async def test_init_runs_once_per_connection_and_custom_reset_on_every_release(
    make_connector: MakeConnector,
) -> None:
    inits: list[int] = []
    resets: list[bool] = []

    async def init(conn: asyncpg.Connection[Any]) -> None:
        inits.append(conn.get_server_pid())

    async def reset(conn: asyncpg.Connection[Any]) -> None:
        resets.append(conn.is_in_transaction())

    async with AsyncPool(make_connector(init=init, reset=reset), max_size=1) as pool:
        for _ in range(3):
            async with pool.acquire() as conn:
                await conn.execute("BEGIN")
        await wait_until(lambda: pool.stats().idle == 1, what="the last reset")
    assert len(inits) == 1
    assert resets == [False, False, False]  # the rollback comes first


@pytest.mark.asyncio
async def test_max_queries_retires_a_connection_once_it_ran_that_many(make_connector: MakeConnector) -> None:
    async with AsyncPool(make_connector(max_queries=5, reset="rollback"), max_size=1) as pool:
        pids = []
        for _ in range(4):
            async with pool.acquire() as conn:
                pids.append(conn.get_server_pid())
                await conn.fetchval("SELECT 1")
                await conn.fetchval("SELECT 2")
        # 2, 4, then 6 queries: retired after the third lease.
        assert pids[0] == pids[1] == pids[2] != pids[3]
        assert pool.stats().destroyed == 1


@pytest.mark.asyncio
async def test_a_failing_init_drops_the_connection_and_is_the_connect_error(
    make_connector: MakeConnector, admin: Admin, app_name: str
) -> None:
    async def init(conn: asyncpg.Connection[Any]) -> None:
        raise LookupError("no such codec")

    pool = AsyncPool(make_connector(init=init), min_size=1, max_size=1, timeout=0.3)
    try:
        with pytest.raises(PoolTimeout) as caught:
            await pool.open(wait=True)
        assert isinstance(caught.value.__cause__, LookupError)
    finally:
        await pool.close()
    await wait_for_backends(admin, app_name, 0)


@pytest.mark.asyncio
async def test_init_state_the_login_role_cannot_restore_fails_loudly_not_per_lease(pg_dsn: str, admin: Any) -> None:
    login, tuner = f"login_{uuid.uuid4().hex[:8]}", f"tuner_{uuid.uuid4().hex[:8]}"
    await admin.execute(
        f"CREATE ROLE {login} LOGIN NOINHERIT; CREATE ROLE {tuner}; GRANT {tuner} TO {login};"
        f"GRANT SET ON PARAMETER log_statement TO {tuner}"
    )
    try:

        async def init(conn: Any) -> None:
            await conn.execute(f"SET ROLE {tuner}; SET log_statement = 'all'")

        parts = urlsplit(pg_dsn)
        dsn = urlunsplit(parts._replace(netloc=f"{login}@{parts.hostname}:{parts.port or 5432}"))
        pool = AsyncPool(AsyncpgConnector(dsn, init=init), max_size=1, health_check_interval=None, timeout=2)
        async with pool:
            for _ in range(3):
                try:
                    async with pool.acquire() as conn:
                        await conn.fetchval("SELECT 1")
                except Exception:
                    pass
                await asyncio.sleep(0.05)
            stats = pool.stats()
        # Either restored, or refused once with the reason: never a silent
        # new connection for every lease.
        assert stats.created <= 1 or stats.connect_errors >= 1, stats
        assert stats.created - stats.connect_errors <= 1, stats
    finally:
        await admin.execute(f"REVOKE SET ON PARAMETER log_statement FROM {tuner}; DROP ROLE {login}; DROP ROLE {tuner}")


@pytest.mark.asyncio
async def test_connects_cut_off_by_close_leave_no_unretrieved_future_and_no_backend(
    make_connector: MakeConnector, admin: Admin, app_name: str
) -> None:
    # asyncpg's connect is not safe to cancel: cut off at the wrong moment it
    # leaves a future whose exception nobody retrieves. Closing a pool while
    # its connects are in flight must not do that, whichever turn it lands on.
    async with loop_errors() as reported:
        for turns in range(12):
            pool = AsyncPool(make_connector(), min_size=3, max_size=3)
            await pool.open()
            for _ in range(turns):
                await asyncio.sleep(0)
            await pool.close()
        await wait_for_backends(admin, app_name, 0)
    assert reported == []


@pytest.mark.asyncio
async def test_the_drop_of_sql_prepared_statements_runs_only_after_a_prepare(make_connector: MakeConnector) -> None:
    # The drop doubles the cost of the reset's round trip: leases that
    # prepared nothing must not pay for it, nor the leases after one that did
    # (the drop's own text names pg_prepared_statements).
    async with AsyncPool(make_connector(), max_size=1, background_reset=False) as pool:
        for sql, due in (("SELECT 1", False), ("PREPARE asyncpool_p AS SELECT 1", True), ("SELECT 2", False)):
            async with pool.acquire() as conn:
                await conn.execute(sql)
                assert getattr(internals(conn), "_sql_prepare_seen", False) is due
            # Released: reset inline, so it has run by now.
            assert getattr(internals(conn), "_sql_prepare_seen", False) is False
            async with pool.acquire() as again:
                assert again is conn
                assert await again.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE from_sql") == 0
