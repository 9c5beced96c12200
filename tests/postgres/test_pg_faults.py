"""Fault scenarios against the real server, through the fault proxy.

Each scenario runs a load through ``AsyncPool(AsyncpgConnector(...))`` on
asyncio and on uvloop while a fault strikes, and checks what reached the
callers, that nothing hangs, that every connection is closed exactly once,
and that no backend is left on the server afterwards. Randomized scenarios
print their seed (``ASYNCPOOL_SEED`` replays one).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import pytest

from asyncpool import AsyncPool, PoolClosed, PoolTimeout
from asyncpool.asyncpg import SessionEndedError

from ..counting import CountingConnector
from ..faultproxy import FaultProxy
from ._helpers import wait_for_backends

if TYPE_CHECKING:
    from typing import TypeAlias

    Admin: TypeAlias = asyncpg.Connection[Any]

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(
            ("asyncio", {"use_uvloop": True}),
            id="uvloop",
            marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not available on Windows"),
        ),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """asyncpg needs asyncio: these run on asyncio and uvloop."""
    return request.param


def _seed() -> int:
    seed = int(os.environ.get("ASYNCPOOL_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (replay with ASYNCPOOL_SEED={seed})")
    return seed


#: What a caller may see when its connection dies under its query.
DIED_IN_HANDS = (asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, OSError)
#: asyncpg's word for a connection closed between the round trips of a call
#: (its ``_check_open`` says "connection is closed" before the call starts).
MID_CALL = "cannot perform operation: connection is closed"


class Outcomes:
    """What reached the callers of a load, by kind."""

    def __init__(self) -> None:
        self.ok = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.broken: list[BaseException] = []

    def record(self, exc: BaseException) -> None:
        """Sort an error raised by a lease's first query (its first call)."""
        if isinstance(exc, SessionEndedError) and not exc.query_sent:
            self.broken.append(exc)  # dead before the call began: lent broken
        elif isinstance(exc, asyncpg.InterfaceError) and str(exc) == MID_CALL:
            # Closed between two round trips of the call (asyncpg prepares a
            # new statement, then runs it): it died in the caller's hands.
            self.errors["closed mid-call"] += 1
        elif isinstance(exc, (asyncpg.InternalClientError, asyncpg.InterfaceError)):
            self.broken.append(exc)
        elif isinstance(exc, DIED_IN_HANDS):
            self.errors[type(exc).__name__] += 1
        else:
            raise exc


async def _load(
    pool: AsyncPool[Any],
    outcomes: Outcomes,
    *,
    tasks: int,
    seconds: float,
    query: Callable[[Any], Awaitable[object]] | None = None,
    timeout: float = 2.0,
) -> None:
    """``tasks`` tasks leasing and querying for ``seconds``."""

    async def one() -> None:
        with anyio.move_on_after(seconds):
            while True:
                try:
                    async with pool.acquire(timeout=timeout) as conn:
                        try:
                            await (query(conn) if query is not None else conn.fetchval("SELECT pg_sleep(0.002)"))
                        except Exception as exc:
                            outcomes.record(exc)
                            continue
                    outcomes.ok += 1
                except PoolTimeout:
                    outcomes.errors["PoolTimeout"] += 1

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(one)


async def _close_and_check(pool: AsyncPool[Any], connector: CountingConnector, admin: Admin, app_name: str) -> None:
    with anyio.fail_after(10):
        await pool.close(timeout=5)
    assert pool.stats().size == 0
    connector.assert_all_closed_once()
    await wait_for_backends(admin, app_name, 0)


async def test_a_network_cut_mid_query_reaches_only_the_queries_in_flight(
    proxied_dsn: str, fault_proxy: FaultProxy, admin: Admin, app_name: str
) -> None:
    connector = CountingConnector(proxied_dsn, server_settings={"application_name": app_name})
    pool: AsyncPool[Any] = AsyncPool(connector, min_size=4, max_size=4, timeout=5)
    await pool.open(wait=True)
    outcomes = Outcomes()
    cut_at: list[float] = []

    async def cut_later() -> None:
        await anyio.sleep(0.4)
        cut_at.append(time.monotonic())
        assert fault_proxy.cut() == 4

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cut_later)
            tg.start_soon(
                lambda: _load(pool, outcomes, tasks=8, seconds=1.5, query=lambda c: c.fetchval("SELECT pg_sleep(0.05)"))
            )
    assert not outcomes.broken, outcomes.broken
    died = sum(n for kind, n in outcomes.errors.items() if kind != "PoolTimeout")
    assert 1 <= died <= 4, outcomes.errors  # the queries in flight at the cut, at most one per connection
    assert outcomes.ok > 20
    stats = pool.stats()
    assert stats.created >= 8 and stats.in_use == 0, stats  # the four were replaced
    await _close_and_check(pool, connector, admin, app_name)


async def test_a_stall_during_validation_is_bounded_and_the_connection_replaced(
    proxied_dsn: str, fault_proxy: FaultProxy, admin: Admin, app_name: str
) -> None:
    connector = CountingConnector(proxied_dsn, server_settings={"application_name": app_name}, validate_timeout=0.3)
    pool: AsyncPool[Any] = AsyncPool(connector, max_size=1, validate_after=0.05, timeout=5)
    async with pool.acquire() as first:
        pass
    await anyio.sleep(0.1)  # due for validation
    fault_proxy.stall(1.0)  # nothing answers for a second
    started = time.monotonic()
    with anyio.fail_after(5):
        async with pool.acquire() as conn:
            took = time.monotonic() - started
            assert conn is not first
            assert await conn.fetchval("SELECT 1") == 1
    # The check gave up after validate_timeout; the replacement came through
    # once the network was back.
    assert 0.9 <= took < 3.0, took
    stats = pool.stats()
    assert (stats.health_failures, stats.created) == (1, 2), stats
    await _close_and_check(pool, connector, admin, app_name)


async def test_connects_refused_for_a_while_time_out_waiters_with_the_cause_then_recover(
    proxied_dsn: str, fault_proxy: FaultProxy, admin: Admin, app_name: str
) -> None:
    connector = CountingConnector(proxied_dsn, server_settings={"application_name": app_name})
    pool: AsyncPool[Any] = AsyncPool(connector, max_size=2, reconnect_delay=0.05, reconnect_max_delay=0.4)
    fault_proxy.refuse()
    refused_at = time.monotonic()
    timeouts: list[PoolTimeout] = []
    while time.monotonic() - refused_at < 1.5:
        try:
            async with pool.acquire(timeout=0.2):
                raise AssertionError("a connection came through a refusing proxy")
        except PoolTimeout as exc:
            timeouts.append(exc)
    fault_proxy.allow()
    allowed_at = time.monotonic()
    with anyio.fail_after(5):
        async with pool.acquire(timeout=5) as conn:
            assert await conn.fetchval("SELECT 1") == 1
    recovered_in = time.monotonic() - allowed_at
    assert timeouts
    assert all(isinstance(exc.__cause__, OSError) for exc in timeouts), [exc.__cause__ for exc in timeouts]
    # One probe per backoff step while refused, the steps growing (jittered
    # within [d/2, d], d doubling from 0.05 s up to 0.4 s).
    refused = [t for t in connector.attempts if t < allowed_at]
    gaps = [later - earlier for earlier, later in itertools.pairwise(refused)]
    assert 3 <= len(refused) <= 12, refused
    assert max(gaps) >= 0.15 and min(gaps[:2]) <= 0.1, gaps
    assert recovered_in < 0.4 + 0.3, recovered_in
    await _close_and_check(pool, connector, admin, app_name)


async def test_terminated_backends_and_cancellations_under_load_never_reach_a_caller_as_a_broken_lend(
    pg_dsn: str, admin: Admin, app_name: str
) -> None:
    # The chaos run: 100 tasks, a backend of the pool terminated every 50 ms,
    # a task cancelled every 10 ms, for 4 s.
    rng = random.Random(_seed())
    connector = CountingConnector(pg_dsn, server_settings={"application_name": app_name})
    pool: AsyncPool[Any] = AsyncPool(connector, min_size=2, max_size=10, timeout=2.0, health_check_interval=0.2)
    await pool.open(wait=True)
    outcomes = Outcomes()
    kills = 0

    async def worker() -> None:
        while True:
            try:
                async with pool.acquire(timeout=rng.uniform(0.05, 2)) as conn:
                    try:
                        await conn.fetchval("SELECT pg_sleep($1)", rng.choice([0, 0.001, 0.003]))
                    except Exception as exc:
                        outcomes.record(exc)
                        continue
                outcomes.ok += 1
            except PoolTimeout:
                outcomes.errors["PoolTimeout"] += 1

    loop = asyncio.get_running_loop()
    workers = [loop.create_task(worker()) for _ in range(100)]
    every = set(workers)
    started = time.monotonic()
    try:
        while time.monotonic() - started < 4:
            await asyncio.sleep(0.01)
            victim = rng.randrange(len(workers))
            workers[victim].cancel()
            workers[victim] = loop.create_task(worker())
            every.add(workers[victim])
            if int((time.monotonic() - started) / 0.05) > kills:
                pids = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", app_name)
                if pids:
                    await admin.execute("SELECT pg_terminate_backend($1)", rng.choice(pids)["pid"])
                kills += 1
    finally:
        for task in every:
            task.cancel()
        await asyncio.gather(*every, return_exceptions=True)
    stats = pool.stats()
    assert (stats.in_use, stats.waiting) == (0, 0), stats
    assert not outcomes.broken, outcomes.broken
    assert outcomes.ok > 1000 and kills > 40, (outcomes.ok, kills)
    await _close_and_check(pool, connector, admin, app_name)


async def test_max_lifetime_recycles_connections_under_load_unseen_by_callers(
    pg_dsn: str, admin: Admin, app_name: str
) -> None:
    connector = CountingConnector(pg_dsn, server_settings={"application_name": app_name})
    pool: AsyncPool[Any] = AsyncPool(connector, min_size=4, max_size=4, max_lifetime=0.3, timeout=5)
    await pool.open(wait=True)
    outcomes = Outcomes()
    with anyio.fail_after(20):
        await _load(pool, outcomes, tasks=16, seconds=2.0)
    assert not outcomes.broken and not outcomes.errors, (outcomes.broken, outcomes.errors)
    assert pool.stats().created >= 12, pool.stats()  # about six generations of four
    await _close_and_check(pool, connector, admin, app_name)


async def test_close_under_load_fails_the_waiters_and_leaves_nothing_behind(
    proxied_dsn: str, fault_proxy: FaultProxy, admin: Admin, app_name: str
) -> None:
    connector = CountingConnector(proxied_dsn, server_settings={"application_name": app_name})
    pool: AsyncPool[Any] = AsyncPool(connector, min_size=4, max_size=4, timeout=10)
    await pool.open(wait=True)
    fault_proxy.set_latency(0.01)
    ended: collections.Counter[str] = collections.Counter()

    async def client() -> None:
        try:
            while True:
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT pg_sleep(0.01)")
        except PoolClosed:
            ended["PoolClosed"] += 1
        except DIED_IN_HANDS:
            ended["died"] += 1  # lent when close(timeout) ran out, and closed under it

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(client)
            await anyio.sleep(0.5)
            assert pool.stats().waiting > 0
            await pool.close(timeout=0.5)
    assert sum(ended.values()) == 40 and ended["PoolClosed"] >= 36, ended
    assert pool.stats().size == 0
    connector.assert_all_closed_once()
    await wait_for_backends(admin, app_name, 0)
