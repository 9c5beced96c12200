"""Opening, health checks, lifetimes, and closing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import anyio
import pytest

from asyncpool import AsyncPool, PoolClosed, PoolError, PoolTimeout

from .fakes import FakeConnector, FakeError, check_invariants, raised_in_thread

pytestmark = pytest.mark.anyio


async def test_open_wait_fills_to_min_size(connector: FakeConnector) -> None:
    async with AsyncPool(connector, min_size=4, max_size=6) as pool:
        await pool.open(wait=True)
        stats = pool.stats()
        assert (stats.size, stats.idle, stats.created) == (4, 4, 4)


async def test_background_work_starts_after_the_call_that_asked_for_it() -> None:
    # A connect that completes without suspending, on every backend (and
    # under an eager task factory, which would run it inside ``open()``'s
    # own synchronous ``grow``): the pool's decisions are never re-entered.
    attempts = 0

    async def make() -> object:
        nonlocal attempts
        attempts += 1
        return object()

    pool = AsyncPool(make, min_size=2, max_size=2)
    await pool.open()
    assert attempts == 0
    assert pool.stats().size == 2  # reserved, connecting
    await pool.open(wait=True)
    assert attempts == 2
    assert pool.stats().idle == 2
    await pool.close()


async def test_open_wait_times_out_with_the_connect_error(connector: FakeConnector) -> None:
    connector.connect_fail = 1.0
    pool = AsyncPool(connector, min_size=2, reconnect_delay=0.01, reconnect_max_delay=0.02)
    with pytest.raises(PoolTimeout) as info:
        await pool.open(wait=True, timeout=0.3)
    assert isinstance(info.value.__cause__, FakeError)
    await pool.close()
    assert pool.stats().size == 0


async def test_open_waiting_on_a_pool_that_never_waits_to_acquire_waits_for_its_connects() -> None:
    # timeout=0 is about acquiring; opening is about connecting, so its wait
    # is bounded by connect_timeout instead of failing at once.
    connector = FakeConnector(connect_delay=0.05)
    pool = AsyncPool(connector, min_size=2, max_size=2, timeout=0)
    with anyio.fail_after(5):
        await pool.open(wait=True)
    assert pool.stats().idle == 2
    await pool.close()
    connector.assert_all_closed_once()


async def test_open_waiting_with_a_zero_acquire_timeout_is_bounded_by_connect_timeout() -> None:
    connector = FakeConnector()
    connector.connect_hang = 1.0
    pool = AsyncPool(connector, min_size=1, timeout=0, connect_timeout=0.2, reconnect_delay=0.01)
    started = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"within 0\.2 s"):
        await pool.open(wait=True)
    assert time.monotonic() - started < 2
    await pool.close()


async def test_min_size_is_kept_up_after_failures(connector: FakeConnector) -> None:
    async with AsyncPool(connector, min_size=3, max_size=3, health_check_interval=0.05, validate_after=0) as pool:
        await pool.open(wait=True)
        for res in connector.created:
            res.dead = True
        await anyio.sleep(0.4)
        stats = pool.stats()
        assert stats.size == 3
        assert stats.idle == 3
        assert stats.health_failures == 3
        assert len(connector.live()) == 3


async def test_health_check_replaces_dead_idle_resources(connector: FakeConnector) -> None:
    async with AsyncPool(connector, min_size=2, max_size=4, health_check_interval=0.05, validate_after=0) as pool:
        await pool.open(wait=True)
        first = connector.created[0]
        first.dead = True
        await anyio.sleep(0.3)
        assert first.close_count == 1
        assert pool.stats().size == 2
        assert pool.stats().health_failures == 1
        check_invariants(pool)


async def test_health_check_survives_a_validate_that_raises(connector: FakeConnector) -> None:
    async with AsyncPool(connector, min_size=1, max_size=1, health_check_interval=0.05, validate_after=0) as pool:
        await pool.open(wait=True)
        connector.validate_fail = 1.0
        await anyio.sleep(0.3)
        connector.validate_fail = 0.0
        await anyio.sleep(0.2)
        assert pool.stats().health_failures >= 1
        async with pool.acquire() as res:
            assert not res.closed


async def test_max_lifetime_retires_with_jitter(connector: FakeConnector) -> None:
    async with AsyncPool(connector, min_size=5, max_size=5, max_lifetime=0.3, health_check_interval=0.05) as pool:
        await pool.open(wait=True)
        expiries = {round(entry.expires_at - entry.created_at, 6) for entry in pool._state.entries.values()}
        assert len(expiries) == 5, "each resource has its own lifetime"
        assert all(0.27 - 1e-6 <= e <= 0.3 for e in expiries)
        originals = list(connector.created)
        await anyio.sleep(0.6)
        assert all(r.close_count == 1 for r in originals)
        assert pool.stats().size == 5


async def test_lent_resource_past_its_lifetime_is_retired_on_release(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=1, max_lifetime=0.1, health_check_interval=None) as pool:
        res = await pool.acquire()
        await anyio.sleep(0.2)
        await pool.release(res)
        await anyio.sleep(0.01)
        assert res.close_count == 1
        assert pool.stats().size == 0


async def test_idle_resources_above_min_size_are_evicted(connector: FakeConnector) -> None:
    async with AsyncPool(connector, min_size=1, max_size=5, max_idle=0.1, health_check_interval=0.05) as pool:
        async with pool.acquire(), pool.acquire(), pool.acquire():
            pass
        assert pool.stats().size == 3
        await anyio.sleep(0.5)
        assert pool.stats().size == 1


async def test_health_check_never_keeps_a_waiter_from_a_healthy_resource() -> None:
    connector = FakeConnector(validate_delay=0.5)
    async with AsyncPool(connector, min_size=2, max_size=2, health_check_interval=0.05, validate_after=0) as pool:
        await pool.open(wait=True)
        await anyio.sleep(0.1)  # the check is now busy with one resource
        assert pool.stats().cleaning == 1
        connector.validate_delay = 0.0  # only the check in progress is slow
        with anyio.fail_after(0.3):
            async with pool.acquire():
                pass


async def test_close_fails_waiters_and_closes_idle_at_once(connector: FakeConnector) -> None:
    pool = AsyncPool(connector, min_size=2, max_size=3)
    await pool.open(wait=True)
    held = await pool.acquire()
    assert pool.stats().idle == 1
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await pool.acquire(timeout=10)
        except PoolClosed as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        pool_full = pool.acquire()
        second = await pool_full
        third = await pool.acquire()
        tg.start_soon(waiter)
        while not pool.stats().waiting:
            await anyio.sleep(0)
        async with anyio.create_task_group() as closer:
            closer.start_soon(pool.close)
            await anyio.sleep(0.05)
            assert pool.closed
            assert len(errors) == 1
            # The idle one is closed at once; lent ones when released.
            assert sum(r.close_count for r in connector.created) == 0
            for res in (held, second, third):
                await pool.release(res)
    connector.assert_all_closed_once()
    await pool.close()  # idempotent
    assert pool.stats().size == 0


async def test_close_forcibly_closes_lent_resources_after_timeout(connector: FakeConnector) -> None:
    pool = AsyncPool(connector, max_size=2)
    res = await pool.acquire()
    with anyio.fail_after(2):
        await pool.close(timeout=0.1)
    assert res.close_count == 1
    await pool.release(res)  # harmless after a forced close
    assert res.close_count == 1
    with pytest.raises(PoolError):
        await pool.release(res)


async def test_close_racing_an_inflight_connect_leaks_nothing() -> None:
    connector = FakeConnector(connect_delay=0.2)
    pool = AsyncPool(connector, min_size=3, max_size=3)
    await pool.open()
    await anyio.sleep(0.05)
    assert connector.connecting == 3
    await pool.close()
    await anyio.sleep(0.3)
    assert pool.stats().size == 0
    connector.assert_all_closed_once()  # whatever was created was closed


async def test_close_lets_a_connect_in_flight_finish_and_closes_what_it_brings() -> None:
    # Cutting a connect off half-way is what some drivers cannot take
    # (asyncpg leaves a future nobody retrieves): close() waits for it.
    connector = FakeConnector(connect_delay=0.2)
    pool = AsyncPool(connector, min_size=2, max_size=2)
    await pool.open()
    await anyio.sleep(0.05)
    assert connector.connecting == 2
    with anyio.fail_after(2):
        await pool.close()
    assert connector.connecting == 0, "no connect was cut off"
    assert len(connector.created) == 2
    assert pool.stats().size == 0
    connector.assert_all_closed_once()


async def test_close_with_a_timeout_cuts_off_a_connect_that_outlives_it() -> None:
    connector = FakeConnector()
    connector.connect_hang = 1.0
    pool = AsyncPool(connector, min_size=1, max_size=1, connect_timeout=30)
    await pool.open()
    await anyio.sleep(0.05)
    started = time.monotonic()
    with anyio.fail_after(2):
        await pool.close(timeout=0.1)
    assert time.monotonic() - started < 1
    assert connector.connecting == 0
    assert pool.stats().size == 0


async def test_close_does_not_wait_for_a_connect_that_has_no_bound() -> None:
    # With connect_timeout=None a hung connect would never end on its own.
    connector = FakeConnector()
    connector.connect_hang = 1.0
    pool = AsyncPool(connector, min_size=1, max_size=1, connect_timeout=None)
    await pool.open()
    await anyio.sleep(0.05)
    with anyio.fail_after(2):
        await pool.close()
    assert pool.stats().size == 0


async def test_close_stops_a_connect_waiting_out_its_backoff_at_once() -> None:
    connector = FakeConnector()
    connector.connect_fail = 1.0
    pool = AsyncPool(connector, min_size=1, max_size=1, reconnect_delay=5.0, reconnect_max_delay=5.0)
    await pool.open()
    with anyio.fail_after(2):
        while connector.connect_attempts < 1:
            await anyio.sleep(0.005)
    await anyio.sleep(0.01)  # now in its backoff sleep
    started = time.monotonic()
    await pool.close()
    assert time.monotonic() - started < 1
    assert pool.stats().size == 0


async def test_close_waits_for_slow_closes(connector: FakeConnector) -> None:
    connector.close_delay = 0.2
    pool = AsyncPool(connector, min_size=2, max_size=2)
    await pool.open(wait=True)
    await pool.close()
    assert connector.closes_finished == len(connector.created) == 2
    stats = pool.stats()
    assert (stats.size, stats.cleaning) == (0, 0), stats


async def test_counters_restart_at_open(connector: FakeConnector) -> None:
    pool = AsyncPool(connector, max_size=1)
    async with pool.acquire():
        pass
    assert pool.stats().acquired == 1
    await pool.close()


async def _in_another_loop(fn: Callable[[], Awaitable[object]]) -> BaseException | None:
    """Run ``fn()`` under ``asyncio.run`` in another thread; what it raised."""

    async def main() -> None:
        await fn()

    return await anyio.to_thread.run_sync(raised_in_thread, lambda: asyncio.run(main()))


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_using_a_pool_from_another_event_loop_raises(connector: FakeConnector) -> None:
    pool = AsyncPool(connector, min_size=1, max_size=1)
    held = await pool.acquire()
    error = await _in_another_loop(lambda: pool.acquire(timeout=1))  # would wait
    assert isinstance(error, PoolError)
    assert "another event loop" in str(error)
    await pool.release(held)
    # close() from there too, and it changes nothing: the pool stays open.
    error = await _in_another_loop(pool.close)
    assert isinstance(error, PoolError)
    assert "another event loop" in str(error)
    assert not pool.closed
    async with pool.acquire() as again:
        assert again is held
    await pool.close()
    connector.assert_all_closed_once()
    # Once closed, close() is a no-op from anywhere.
    assert await _in_another_loop(pool.close) is None
