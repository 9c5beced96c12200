"""``asyncpool.asyncpg.create_pool``: asyncpg's ``Pool`` interface, drop-in."""

from __future__ import annotations

import asyncio
import io
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import asyncpg.pool
import pytest

from asyncpool import PoolClosed, PoolError, PoolTimeout
from asyncpool.asyncpg import Pool, create_pool

from ._helpers import backend_pids, internals, loop_errors, wait_for_backends, wait_until

if TYPE_CHECKING:
    from typing import TypeAlias

    Admin: TypeAlias = asyncpg.Connection[Any]

pytestmark = [pytest.mark.postgres]

PoolFactory = Callable[..., Pool]


@pytest.fixture
def make_pool(pg_dsn: str, app_name: str) -> PoolFactory:
    """``create_pool`` on the test server, tagged with ``app_name``."""

    def make(dsn: str | None = None, **kwargs: Any) -> Pool:
        kwargs.setdefault("server_settings", {"application_name": app_name})
        return create_pool(dsn or pg_dsn, **kwargs)

    return make


@pytest.mark.asyncio
async def test_awaiting_opens_it_with_min_size_connections(make_pool: PoolFactory, admin: Admin, app_name: str) -> None:
    pool = await make_pool(min_size=2, max_size=4)
    try:
        assert (pool.get_min_size(), pool.get_max_size()) == (2, 4)
        assert pool.get_size() == 2
        assert pool.get_idle_size() == 2
        assert len(await backend_pids(admin, app_name)) == 2
        assert await pool.fetchval("SELECT 1") == 1
        assert not pool.is_closing()
    finally:
        await pool.close()
    assert pool.is_closing()
    await wait_for_backends(admin, app_name, 0)
    with pytest.raises(PoolClosed):
        await pool.fetchval("SELECT 1")


@pytest.mark.asyncio
async def test_a_pool_that_never_waits_to_acquire_still_opens(
    make_pool: PoolFactory, admin: Admin, app_name: str
) -> None:
    # acquire_timeout=0 is about acquiring; opening waits for its connects.
    async with loop_errors() as reported:
        pool = await make_pool(min_size=1, max_size=2, acquire_timeout=0)
        try:
            assert pool.get_size() == 1
            assert await pool.fetchval("SELECT 1") == 1
        finally:
            await pool.close()
        await wait_for_backends(admin, app_name, 0)
    assert reported == []


@pytest.mark.asyncio
async def test_init_size_opens_more_than_min_size(make_pool: PoolFactory, admin: Admin, app_name: str) -> None:
    async with make_pool(min_size=1, init_size=3, max_size=4) as pool:
        assert (pool.get_init_size(), pool.get_min_size()) == (3, 1)
        assert pool.get_size() == 3
        assert len(await backend_pids(admin, app_name)) == 3
        assert await pool.fetchval("SELECT 1") == 1
    assert make_pool(min_size=2).get_init_size() == 2  # defaults to min_size
    for bad in (0, 5, 2.5):
        with pytest.raises(ValueError, match="init_size"):
            make_pool(min_size=1, init_size=bad, max_size=4)
    # Growing past min_size at opening waits for connects: it needs room to wait.
    with pytest.raises(ValueError, match="max_waiting=1"):
        make_pool(min_size=1, init_size=3, max_size=4, max_waiting=1)
    with pytest.raises(ValueError, match="acquire_timeout=0"):
        make_pool(min_size=1, init_size=3, max_size=4, acquire_timeout=0)
    async with make_pool(min_size=1, init_size=3, max_size=4, max_waiting=2) as pool:
        assert pool.get_size() == 3


@pytest.mark.asyncio
async def test_async_with_opens_and_closes(make_pool: PoolFactory, admin: Admin, app_name: str) -> None:
    async with make_pool(min_size=1, max_size=2) as pool:
        assert pool.get_size() == 1
        assert await pool.fetchval("SELECT 2") == 2
    assert pool.is_closing()
    await wait_for_backends(admin, app_name, 0)


@pytest.mark.asyncio
async def test_query_shortcuts(make_pool: PoolFactory) -> None:
    table = f"asyncpool_facade_{random.randrange(1 << 30)}"
    async with make_pool(min_size=1, max_size=2) as pool:
        assert await pool.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)") == "CREATE TABLE"
        try:
            assert await pool.execute(f"INSERT INTO {table} VALUES ($1, $2)", 1, "one") == "INSERT 0 1"
            await pool.executemany(f"INSERT INTO {table} VALUES ($1, $2)", [(2, "two"), (3, "three")])
            rows = await pool.fetch(f"SELECT id, name FROM {table} WHERE id > $1 ORDER BY id", 1)
            assert [(row["id"], row["name"]) for row in rows] == [(2, "two"), (3, "three")]
            row = await pool.fetchrow(f"SELECT id, name FROM {table} WHERE id = $1", 3)
            assert row is not None
            assert row["name"] == "three"
            assert await pool.fetchrow(f"SELECT id FROM {table} WHERE id = 99") is None
            assert await pool.fetchval(f"SELECT id, name FROM {table} WHERE id = 1", column=1) == "one"
            many = await pool.fetchmany("SELECT $1::int * 2 AS double", [(1,), (2,)])
            assert [r["double"] for r in many] == [2, 4]
            with pytest.raises(asyncpg.UniqueViolationError):
                await pool.execute(f"INSERT INTO {table} VALUES (1, 'again')")
        finally:
            await pool.execute(f"DROP TABLE {table}")


@pytest.mark.asyncio
async def test_copy_shortcuts(make_pool: PoolFactory) -> None:
    table = f"asyncpool_copy_{random.randrange(1 << 30)}"
    async with make_pool(min_size=1, max_size=2) as pool:
        await pool.execute(f"CREATE TABLE {table} (id int, name text)")
        try:
            status = await pool.copy_records_to_table(table, records=[(1, "one"), (2, "two")], columns=["id", "name"])
            assert status == "COPY 2"
            assert await pool.copy_to_table(table, source=io.BytesIO(b"3,three\n"), format="csv") == "COPY 1"
            out = io.BytesIO()
            assert await pool.copy_from_table(table, output=out, format="csv", columns=["name"]) == "COPY 3"
            assert sorted(out.getvalue().decode().split()) == ["one", "three", "two"]
            out = io.BytesIO()
            status = await pool.copy_from_query(f"SELECT id FROM {table} WHERE id > $1", 1, output=out)
            assert status == "COPY 2"
            assert sorted(out.getvalue().split()) == [b"2", b"3"]
            with pytest.raises(TypeError, match="no_such_option"):
                await pool.copy_from_table(table, output=io.BytesIO(), no_such_option=1)
            await wait_until(lambda: pool.get_idle_size() == pool.get_size(), what="every lease back")
        finally:
            await pool.execute(f"DROP TABLE {table}")


@pytest.mark.asyncio
async def test_acquire_awaited_released_and_in_transactions(make_pool: PoolFactory) -> None:
    async with make_pool(min_size=1, max_size=1) as pool:
        conn = await pool.acquire()
        lent = internals(conn)._con  # the connection behind asyncpg's proxy
        try:
            async with conn.transaction():
                assert await conn.fetchval("SELECT 1") == 1
        finally:
            await pool.release(conn)
        assert pool.get_idle_size() in (0, 1)  # the reset may still be running
        async with pool.acquire() as again:
            assert internals(again)._con is lent


@pytest.mark.asyncio
async def test_acquire_timeout(make_pool: PoolFactory) -> None:
    async with make_pool(min_size=1, max_size=1) as pool, pool.acquire():
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await pool.acquire(timeout=0.2)
        with pytest.raises(TimeoutError):
            async with pool.acquire(timeout=0.2):
                pass
        assert time.monotonic() - started < 2


@pytest.mark.asyncio
async def test_release_rejects_a_connection_it_did_not_lend(make_pool: PoolFactory, pg_dsn: str) -> None:
    # As asyncpg's pool: an asyncpg.InterfaceError, which is also a PoolError.
    stranger = await asyncpg.connect(pg_dsn)
    try:
        async with make_pool(min_size=0, max_size=1) as pool, make_pool(min_size=0, max_size=1) as other:
            with pytest.raises(asyncpg.InterfaceError, match="is not a member of this pool") as caught:
                await pool.release(stranger)
            assert isinstance(caught.value, PoolError)
            async with other.acquire() as theirs:
                with pytest.raises(asyncpg.InterfaceError, match="is not a member of this pool"):
                    await pool.release(theirs)
                with pytest.raises(asyncpg.InterfaceError, match="is not a member of this pool"):
                    await pool.release(internals(theirs)._con)  # the bare connection
            assert pool.stats().in_use == other.stats().in_use == 0
    finally:
        await stranger.close()


@pytest.mark.asyncio
async def test_a_lent_connection_is_asyncpgs_proxy_and_detached_on_release(make_pool: PoolFactory) -> None:
    async with make_pool(min_size=1, max_size=1) as pool:
        conn = await pool.acquire()
        assert type(conn) is asyncpg.pool.PoolConnectionProxy
        assert isinstance(internals(conn), asyncpg.Connection)  # asyncpg's proxies pass as connections
        await pool.release(conn)
        # Used after release: a clear error, not a query on a connection
        # that another task may hold by now.
        with pytest.raises(asyncpg.InterfaceError, match="released back to the pool"):
            await conn.fetchval("SELECT 1")
        await pool.release(conn)  # a stale second release is ignored, as in asyncpg
        async with pool.acquire() as held:
            pass
        with pytest.raises(asyncpg.InterfaceError, match="released back to the pool"):
            await held.fetchval("SELECT 1")
        assert pool.stats().in_use == 0


@pytest.mark.asyncio
async def test_a_facade_pool_is_an_asyncpg_pool(make_pool: PoolFactory) -> None:
    async with make_pool(min_size=0, max_size=1) as pool:
        assert isinstance(pool, asyncpg.pool.Pool)


@pytest.mark.asyncio
async def test_awaiting_a_pool_twice_at_once_or_using_it_while_it_opens_is_reported(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pytest.raises(asyncpg.InterfaceError, match="pool is not initialized"):
        await pool.fetchval("SELECT 1")
    opening = asyncio.ensure_future(pool._open())
    await asyncio.sleep(0)
    with pytest.raises(asyncpg.InterfaceError, match="being initialized in another task"):
        await pool
    with pytest.raises(asyncpg.InterfaceError, match="being initialized, but not yet ready"):
        await pool.fetchval("SELECT 1")
    assert await opening is pool
    assert await pool.fetchval("SELECT 1") == 1
    await pool.close()
    with pytest.raises(PoolClosed) as caught:
        await pool.acquire()
    assert isinstance(caught.value, asyncpg.InterfaceError)
    assert "pool is closed" in str(caught.value)


@pytest.mark.asyncio
async def test_init_once_per_connection_setup_on_every_acquire(make_pool: PoolFactory) -> None:
    inits: list[int] = []
    setups: list[int] = []

    async def init(conn: asyncpg.Connection[Any]) -> None:
        inits.append(conn.get_server_pid())

    async def setup(conn: asyncpg.Connection[Any]) -> None:
        setups.append(conn.get_server_pid())

    async with make_pool(min_size=1, max_size=1, init=init, setup=setup) as pool:
        for _ in range(3):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        conn = await pool.acquire()
        await pool.release(conn)
        await pool.fetchval("SELECT 1")
    assert len(inits) == 1
    assert len(setups) == 5
    assert set(setups) == set(inits)


@pytest.mark.asyncio
async def test_a_failing_setup_reaches_the_caller_and_the_connection_is_replaced(make_pool: PoolFactory) -> None:
    fail = [True]

    async def setup(conn: asyncpg.Connection[Any]) -> None:
        if fail[0]:
            raise RuntimeError("setup failed")

    async with make_pool(min_size=1, max_size=1, setup=setup) as pool:
        with pytest.raises(RuntimeError, match="setup failed"):
            async with pool.acquire():
                pass
        fail[0] = False
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        assert pool.stats().destroyed == 1


@pytest.mark.asyncio
async def test_custom_reset_runs_after_the_rollback(make_pool: PoolFactory) -> None:
    seen: list[tuple[bool, str]] = []

    async def reset(conn: asyncpg.Connection[Any]) -> None:
        seen.append((conn.is_in_transaction(), await conn.fetchval("SHOW search_path")))
        await conn.execute("RESET ALL")

    async with make_pool(min_size=1, max_size=1, reset=reset) as pool:
        async with pool.acquire() as conn:
            await conn.execute("SET search_path TO pg_catalog")
            await conn.execute("BEGIN")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW search_path") != "pg_catalog"
    # The rollback comes first, then the custom reset (on each release).
    assert seen == [(False, "pg_catalog"), (False, '"$user", public')]


def _get_reset_query(self: Any) -> str:
    return "RESET search_path"


_resets: list[int] = []


async def _counting_reset(self: Any, *, timeout: float | None = None) -> None:
    _resets.append(self.get_server_pid())
    await asyncpg.Connection.reset(self, timeout=timeout)


# Built with type(), as in test_asyncpg_options_map_onto_the_pool, so that
# the tests type-check with or without asyncpg's stubs. The first overrides
# asyncpg's reset query (what asyncpg's docs suggest subclassing for); the
# second overrides reset() itself and keeps asyncpg's query.
ResetsSearchPathOnly = type("ResetsSearchPathOnly", (asyncpg.Connection,), {"get_reset_query": _get_reset_query})
CountsResets = type("CountsResets", (asyncpg.Connection,), {"reset": _counting_reset})


@pytest.mark.asyncio
async def test_a_connection_class_that_overrides_the_reset_query_is_honoured(make_pool: PoolFactory) -> None:
    async with make_pool(min_size=1, max_size=1, connection_class=ResetsSearchPathOnly) as pool:
        assert pool.connector.reset_policy == "custom"
        async with pool.acquire() as conn:
            default_path = await conn.fetchval("SHOW search_path")
            await conn.execute("SET search_path TO pg_catalog")
            await conn.execute("SET work_mem = '7MB'")
            await conn.execute("BEGIN")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW search_path") == default_path
            # Its query ran instead of the full reset, as in asyncpg.
            assert await conn.fetchval("SHOW work_mem") == "7MB"


@pytest.mark.asyncio
async def test_a_connection_class_that_overrides_reset_is_honoured(make_pool: PoolFactory) -> None:
    _resets.clear()
    async with make_pool(min_size=1, max_size=1, connection_class=CountsResets) as pool:
        assert pool.connector.reset_policy == "custom"
        for _ in range(3):
            async with pool.acquire() as conn:
                await conn.execute("SET work_mem = '7MB'")
        async with pool.acquire() as conn:
            # asyncpg's own reset query: RESET ALL, among others.
            assert await conn.fetchval("SHOW work_mem") != "7MB"
    assert len(_resets) == 4  # one per lease
    # An explicit reset= still wins over the class, as in asyncpg.
    assert make_pool(connection_class=CountsResets, reset="rollback").connector.reset_policy == "rollback"


@pytest.mark.asyncio
async def test_reset_policy_by_name(make_pool: PoolFactory) -> None:
    async with make_pool(min_size=1, max_size=1, reset="rollback") as pool:
        assert pool.connector.reset_policy == "rollback"
        async with pool.acquire() as conn:
            await conn.execute("SET search_path TO pg_catalog")
        assert await pool.fetchval("SHOW search_path") == "pg_catalog"


@pytest.mark.asyncio
async def test_max_queries_replaces_a_connection(make_pool: PoolFactory) -> None:
    async with make_pool(min_size=1, max_size=1, max_queries=3, reset="rollback") as pool:
        pids = [await pool.fetchval("SELECT pg_backend_pid()") for _ in range(4)]
    assert pids[0] == pids[1] == pids[2] != pids[3]


@pytest.mark.asyncio
async def test_expire_connections_and_set_connect_args(
    make_pool: PoolFactory, pg_dsn: str, admin: Admin, app_name: str
) -> None:
    async with make_pool(min_size=2, max_size=2) as pool:
        lent = await pool.acquire()
        old_pids = set(await backend_pids(admin, app_name))
        renamed = app_name + "-new"
        pool.set_connect_args(pg_dsn, server_settings={"application_name": renamed})
        await pool.expire_connections()
        await pool.release(lent)  # expired while lent: closed, not kept
        new_pids = {await pool.fetchval("SELECT pg_backend_pid()") for _ in range(4)}
        assert not new_pids & old_pids
        assert await pool.fetchval("SHOW application_name") == renamed
        await wait_for_backends(admin, app_name, 0)


@pytest.mark.asyncio
async def test_terminate_drops_every_backend_at_once(make_pool: PoolFactory, admin: Admin, app_name: str) -> None:
    pool = await make_pool(min_size=3, max_size=3)
    lent = await pool.acquire()
    pool.terminate()
    assert pool.is_closing()
    assert lent.is_closed()
    await wait_for_backends(admin, app_name, 0)
    await pool.release(lent)  # a no-op now, as in asyncpg
    await pool.close()


@pytest.mark.asyncio
async def test_a_close_that_times_out_terminates_the_lent_connections(
    make_pool: PoolFactory, admin: Admin, app_name: str
) -> None:
    pool = await make_pool(min_size=2, max_size=2)
    lent = await pool.acquire()
    assert len(await backend_pids(admin, app_name)) == 2
    # asyncpg's documented way to bound a close.
    with pytest.raises(asyncio.TimeoutError):  # not yet the built-in one on 3.10
        await asyncio.wait_for(pool.close(), 0.2)
    assert lent.is_closed()
    await wait_for_backends(admin, app_name, 0)
    await pool.release(lent)  # a no-op now, as after terminate()
    await pool.close()


@pytest.mark.asyncio
async def test_a_cancelled_close_terminates_the_lent_connections(
    make_pool: PoolFactory, admin: Admin, app_name: str
) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    lent = await pool.acquire()
    closing = asyncio.create_task(pool.close())
    await asyncio.sleep(0.1)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await wait_for_backends(admin, app_name, 0)
    assert pool.is_closing()
    await pool.release(lent)
    await pool.close()


@pytest.mark.asyncio
async def test_a_connect_error_retrying_cannot_cure_is_raised_at_once(make_pool: PoolFactory, pg_dsn: str) -> None:
    started = time.monotonic()
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await make_pool(pg_dsn.rsplit("/", 1)[0] + "/asyncpool_no_such_db", min_size=2)
    assert time.monotonic() - started < 5


@pytest.mark.asyncio
async def test_an_error_from_init_is_raised_from_opening_at_once(
    make_pool: PoolFactory, admin: Admin, app_name: str
) -> None:
    class InitFailed(Exception):
        pass

    async def init(conn: Any) -> None:
        raise InitFailed("no codecs today")

    pool = make_pool(min_size=2, init=init)
    started = time.monotonic()
    with pytest.raises(InitFailed, match="no codecs today"):
        await pool
    assert time.monotonic() - started < 5  # not the 30 s acquire timeout
    assert pool.is_closing()
    await wait_for_backends(admin, app_name, 0)


@pytest.mark.asyncio
async def test_asyncpg_options_map_onto_the_pool(make_pool: PoolFactory) -> None:
    # Built with type() so that the test type-checks with or without
    # asyncpg's stubs installed.
    Record = type("Record", (asyncpg.Record,), {})
    Connection = type("Connection", (asyncpg.Connection,), {})

    pool = make_pool(
        min_size=0,
        max_size=3,
        max_inactive_connection_lifetime=12.5,
        record_class=Record,
        connection_class=Connection,
        command_timeout=7,
    )
    assert pool.pool.config.max_idle == 12.5
    assert pool.connector.reset_policy == "full"  # the class keeps asyncpg's reset
    assert pool.pool.config.timeout == 30.0  # a finite acquire timeout by default
    async with pool:
        async with pool.acquire() as conn:
            assert isinstance(conn, Connection)
            assert isinstance(await conn.fetchrow("SELECT 1 AS one"), Record)
        assert isinstance(await pool.fetchrow("SELECT 1 AS one"), Record)
    assert make_pool(max_inactive_connection_lifetime=0).pool.config.max_idle is None
    with pytest.raises(ValueError, match="max_queries"):
        make_pool(max_queries=0)
    with pytest.raises(TypeError, match="connection_class"):
        make_pool(connection_class=dict)
    with pytest.raises(TypeError, match="no_such_option"):
        make_pool(no_such_option=1)


@pytest.mark.asyncio
async def test_idle_connections_above_min_size_retire_soon_after_their_inactive_lifetime(
    make_pool: PoolFactory, admin: Admin, app_name: str
) -> None:
    async with make_pool(min_size=1, max_size=4, max_inactive_connection_lifetime=0.5) as pool:
        assert pool.pool.config.health_check_interval == 0.25
        release = asyncio.Event()

        async def hold() -> None:
            async with pool.acquire():
                await release.wait()

        tasks = [asyncio.create_task(hold()) for _ in range(4)]
        await wait_until(lambda: pool.stats().in_use == 4, what="four leases")
        release.set()
        await asyncio.gather(*tasks)
        assert len(await backend_pids(admin, app_name)) == 4
        started_idle = time.monotonic()
        await wait_for_backends(admin, app_name, 1, timeout=3.0)
        assert time.monotonic() - started_idle < 3.0
        # A connection counts in the size until its close has finished.
        await wait_until(lambda: pool.get_size() == 1, timeout=2.0, what="the closes to finish")
    # Lifetimes longer than twice the interval leave it alone.
    assert make_pool(max_inactive_connection_lifetime=300).pool.config.health_check_interval == 30.0
    assert make_pool(health_check_interval=None).pool.config.health_check_interval is None


@pytest.mark.asyncio
async def test_a_custom_connect_is_called_as_asyncpg_calls_it(make_pool: PoolFactory, pg_dsn: str) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    # Keyword-only and required, as a wrapper written for asyncpg may have them.
    async def connect(
        dsn: str, *, loop: asyncio.AbstractEventLoop, connection_class: Any, record_class: Any, **kwargs: Any
    ) -> Any:
        calls.append((dsn, {"loop": loop, "connection_class": connection_class, "record_class": record_class}))
        return await asyncpg.connect(dsn, connection_class=connection_class, record_class=record_class, **kwargs)

    Record = type("Record", (asyncpg.Record,), {})
    async with make_pool(min_size=1, max_size=1, connect=connect, command_timeout=9) as pool:
        assert await pool.fetchval("SELECT 1") == 1
        loop = asyncio.get_running_loop()
    async with make_pool(min_size=1, max_size=1, connect=connect, record_class=Record) as pool:
        assert isinstance(await pool.fetchrow("SELECT 1"), Record)
    # asyncpg's defaults when the pool was given no class; the connection
    # class is asyncpg's, derived only to report a session the server ended.
    dsn, passed = calls[0]
    assert (dsn, passed["loop"], passed["record_class"]) == (pg_dsn, loop, asyncpg.Record)
    assert issubclass(passed["connection_class"], asyncpg.Connection)
    assert passed["connection_class"].__qualname__ == asyncpg.Connection.__qualname__
    assert calls[1][1]["record_class"] is Record


@pytest.mark.asyncio
async def test_a_lease_cancelled_mid_query_does_not_break_the_next_one(make_pool: PoolFactory) -> None:
    async with make_pool(min_size=1, max_size=1) as pool:
        for _ in range(20):
            task = asyncio.create_task(pool.execute("SELECT pg_sleep(1)"))
            await asyncio.sleep(random.random() * 0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await pool.fetchval("SELECT 1") == 1


@pytest.mark.asyncio
async def test_repr_shows_the_pool_and_where_it_connects(make_pool: PoolFactory) -> None:
    async with make_pool(min_size=1, max_size=2, name="orders") as pool:
        await wait_until(lambda: pool.get_idle_size() == 1)
        text = repr(pool)
        assert "AsyncpgConnector" in text
        assert "'orders' open" in text
        assert "1 idle" in text


@pytest.mark.asyncio
async def test_init_error_while_filling_to_init_size_is_raised_at_once(pg_dsn: str, admin: Any, app_name: str) -> None:
    calls = 0

    async def init(conn: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            await asyncio.sleep(0.2)  # the first two are lent to the fill by now
            raise RuntimeError("init failed")

    pool = create_pool(
        pg_dsn, min_size=1, init_size=3, max_size=3, init=init, server_settings={"application_name": app_name}
    )
    with pytest.raises(RuntimeError, match="init failed"):
        await asyncio.wait_for(pool, 3)
    await wait_for_backends(admin, app_name, 0)


@pytest.mark.asyncio
async def test_create_pool_cancelled_while_filling_to_init_size_does_not_hang(
    pg_dsn: str, admin: Any, app_name: str
) -> None:
    async def init(conn: Any) -> None:
        await asyncio.sleep(0.3)

    pool = create_pool(
        pg_dsn, min_size=1, init_size=4, max_size=4, init=init, server_settings={"application_name": app_name}
    )
    inner = asyncio.ensure_future(asyncio.wait_for(pool, 0.5))
    done, _ = await asyncio.wait({inner}, timeout=3)
    assert done, "create_pool() still running 3 s after its 0.5 s wait_for"
    with pytest.raises(asyncio.TimeoutError):
        inner.result()
    await wait_for_backends(admin, app_name, 0)


@pytest.mark.asyncio
async def test_close_from_another_loop_changes_nothing(pg_dsn: str, app_name: str) -> None:
    pool = await create_pool(pg_dsn, min_size=2, max_size=2, server_settings={"application_name": app_name})
    conn = await pool.acquire()
    raised: list[BaseException] = []

    def elsewhere() -> None:
        async def close() -> None:
            try:
                await pool.close()
            except BaseException as exc:
                raised.append(exc)

        asyncio.run(close())

    thread = threading.Thread(target=elsewhere)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.02)
    assert len(raised) == 1 and isinstance(raised[0], PoolError)
    assert not pool.is_closing()
    assert await conn.fetchval("SELECT 1") == 1, "the owner's connection was terminated"
    await pool.release(conn)
    await asyncio.wait_for(pool.close(), 5)  # the owner can still close it


@pytest.mark.asyncio
async def test_a_schema_change_drops_the_statement_cache_of_every_connection(
    make_pool: PoolFactory, admin: asyncpg.Connection[Any]
) -> None:
    # As in asyncpg's pool: the connection that meets the stale statement
    # clears the caches of all the pool's connections, so another one does
    # not fail inside a transaction, where asyncpg cannot re-prepare.
    table = f"asyncpool_schema_{random.randrange(1 << 30)}"
    await admin.execute(f"CREATE TABLE {table} (x int)")
    try:
        async with make_pool(min_size=2, max_size=2) as pool:
            first, second = await pool.acquire(), await pool.acquire()
            for conn in (first, second):
                assert await conn.fetch(f"SELECT * FROM {table}") == []
            await pool.release(first)
            await pool.release(second)
            await admin.execute(f"ALTER TABLE {table} ALTER COLUMN x TYPE bigint")
            first, second = await pool.acquire(), await pool.acquire()
            assert await first.fetch(f"SELECT * FROM {table}") == []  # re-prepared, outside a transaction
            async with second.transaction():
                assert await second.fetch(f"SELECT * FROM {table}") == []
            await pool.release(first)
            await pool.release(second)
    finally:
        await admin.execute(f"DROP TABLE {table}")
