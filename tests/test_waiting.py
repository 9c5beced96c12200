"""Waiting: first in first out, a deadline on every wait, backpressure."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest

from asyncpool import AsyncPool, PoolBusy, PoolError, PoolTimeout

from .fakes import FakeConnector, FakeError, FakeResource, check_invariants

pytestmark = pytest.mark.anyio


async def test_waiters_are_served_first_in_first_out(connector: FakeConnector) -> None:
    order: list[int] = []
    async with AsyncPool(connector, max_size=1) as pool:
        held = await pool.acquire()

        async def waiter(n: int) -> None:
            async with pool.acquire():
                order.append(n)
                await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(waiter, n)
                # Make the arrival order unambiguous.
                while pool.stats().waiting < n + 1:
                    await anyio.sleep(0)
            await pool.release(held)
    assert order == list(range(20))


async def test_a_newcomer_does_not_jump_the_queue(connector: FakeConnector) -> None:
    order: list[str] = []
    async with AsyncPool(connector, max_size=1) as pool:
        held = await pool.acquire()

        async def waiter(name: str) -> None:
            async with pool.acquire():
                order.append(name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "first")
            while pool.stats().waiting < 1:
                await anyio.sleep(0)
            await pool.release(held)
            # The resource is now handed to "first"; a newcomer arriving in
            # the same instant must queue behind it, not take it.
            tg.start_soon(waiter, "newcomer")
    assert order == ["first", "newcomer"]


async def test_wait_times_out_with_pool_timeout(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=1) as pool:
        held = await pool.acquire()
        started = time.monotonic()
        with pytest.raises(PoolTimeout) as info:
            await pool.acquire(timeout=0.2)
        elapsed = time.monotonic() - started
        assert isinstance(info.value, TimeoutError)
        # Before 3.11 a distinct class, which asyncio.wait_for and asyncpg's
        # pool raise and code catches.
        assert isinstance(info.value, asyncio.TimeoutError)
        assert isinstance(info.value, PoolError)
        assert 0.15 <= elapsed < 2.0
        assert pool.stats().timeouts == 1
        assert pool.stats().waiting == 0
        check_invariants(pool)
        await pool.release(held)


async def test_pool_timeout_default_applies(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=1, timeout=0.1) as pool:
        async with pool.acquire():
            with pytest.raises(PoolTimeout):
                async with pool.acquire():
                    pass


async def test_timeout_zero_means_do_not_wait(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=1) as pool:
        async with pool.acquire():
            with pytest.raises(PoolTimeout):
                await pool.acquire(timeout=0)


async def test_timeout_zero_lends_an_idle_resource_that_is_due_for_validation() -> None:
    # timeout=0 means "do not wait for another task's release": an idle
    # resource is there, so it is validated and lent, not refused.
    connector = FakeConnector()
    async with AsyncPool(connector, min_size=1, max_size=4, validate_after=0.02) as pool:
        await pool.open(wait=True)
        for _ in range(5):
            await anyio.sleep(0.03)  # idle past validate_after again
            res = await pool.acquire(timeout=0)
            await pool.release(res)
        assert connector.validations == 5
        stats = pool.stats()
        assert (stats.created, stats.timeouts, stats.acquired) == (1, 0, 5), stats


async def test_timeout_zero_validation_is_bounded_by_cleanup_timeout() -> None:
    # A validation that hangs is the pool's own I/O: cleanup_timeout bounds
    # it, the resource is retired, and the caller is told there was none.
    connector = FakeConnector()
    async with AsyncPool(connector, min_size=1, max_size=1, validate_after=0.01, cleanup_timeout=0.1) as pool:
        await pool.open(wait=True)
        await anyio.sleep(0.02)
        connector.validate_hang = 1.0
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await pool.acquire(timeout=0)
        assert time.monotonic() - started < 1.0
        # The check's own bound ran out, not the caller's: it found the
        # resource unusable.
        assert pool.stats().health_failures == 1
        connector.validate_hang = 0.0
        with anyio.fail_after(2):
            async with pool.acquire() as res:  # a replacement
                assert res is not connector.created[0]
        check_invariants(pool)
    connector.assert_all_closed_once()


async def test_mixed_deadlines_each_expire_on_time(connector: FakeConnector) -> None:
    """A short deadline behind a long one still fires on time."""
    async with AsyncPool(connector, max_size=1) as pool:
        held = await pool.acquire()
        results: dict[str, float] = {}

        async def waiter(name: str, timeout: float) -> None:
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                await pool.acquire(timeout=timeout)
            results[name] = time.monotonic() - started

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "long", 1.0)
            await anyio.sleep(0.01)
            tg.start_soon(waiter, "short", 0.1)
        assert results["short"] < 0.6
        assert results["long"] >= 0.9
        await pool.release(held)


async def test_timeout_carries_the_last_connect_error(connector: FakeConnector) -> None:
    connector.connect_fail = 1.0
    async with AsyncPool(connector, max_size=2, reconnect_delay=0.01, reconnect_max_delay=0.05) as pool:
        with pytest.raises(PoolTimeout) as info:
            await pool.acquire(timeout=0.3)
        assert isinstance(info.value.__cause__, FakeError)
        assert pool.stats().connect_errors >= 2


async def test_failed_connects_back_off(connector: FakeConnector) -> None:
    connector.connect_fail = 1.0
    async with AsyncPool(connector, max_size=1, reconnect_delay=0.05, reconnect_max_delay=0.2) as pool:
        with pytest.raises(PoolTimeout):
            await pool.acquire(timeout=1.0)
    # 0.05, 0.1, 0.2, 0.2 ... (jittered down to half): a tight loop would
    # have made thousands of attempts in a second.
    assert 3 <= connector.connect_attempts <= 20


async def test_max_waiting_rejects_at_once(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=1, max_waiting=2) as pool:
        held = await pool.acquire()

        async def wait_in_line() -> None:
            await pool.acquire(timeout=5.0)

        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(wait_in_line)
            while pool.stats().waiting < 2:
                await anyio.sleep(0)
            started = time.monotonic()
            with pytest.raises(PoolBusy):
                await pool.acquire()
            assert time.monotonic() - started < 0.5
            assert pool.stats().rejected == 1
            tg.cancel_scope.cancel()
        await pool.release(held)
        check_invariants(pool)


async def test_burst_of_ten_thousand_is_turned_away_fast(connector: FakeConnector) -> None:
    busy = 0
    async with AsyncPool(connector, max_size=10, max_waiting=100) as pool:

        async def request() -> None:
            nonlocal busy
            try:
                async with pool.acquire(timeout=5):
                    await anyio.sleep(0.01)
            except PoolBusy:
                busy += 1

        async with anyio.create_task_group() as tg:
            for _ in range(10_000):
                tg.start_soon(request)
        stats = pool.stats()
        assert busy == stats.rejected
        assert busy > 9000
        assert stats.acquired == 10_000 - busy
        check_invariants(pool)


async def test_connect_for_a_waiter_who_gave_up_joins_the_pool() -> None:
    connector = FakeConnector(connect_delay=0.3)
    async with AsyncPool(connector, max_size=2) as pool:
        with pytest.raises(PoolTimeout):
            await pool.acquire(timeout=0.05)
        assert pool.stats().size == 1, "the connect goes on"
        await anyio.sleep(0.5)
        stats = pool.stats()
        assert (stats.idle, stats.created) == (1, 1)
        connector.connect_delay = 10.0  # any new connect would now time out
        with anyio.fail_after(1):
            async with pool.acquire() as res:
                assert res is connector.created[0]


async def test_resource_goes_straight_to_the_longest_waiter(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=1) as pool:
        held = await pool.acquire()
        got = []

        async def waiter() -> None:
            async with pool.acquire() as res:
                got.append(res)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            while not pool.stats().waiting:
                await anyio.sleep(0)
            await pool.release(held)
            assert pool.stats().idle == 0, "handed over, not parked as idle"
        assert got == [held]


class _TimedConnector(FakeConnector):
    """Records when each connect attempt started and each resource arrived."""

    def __init__(self) -> None:
        super().__init__(connect_delay=0.001)
        self.attempted_at: list[float] = []
        self.created_at: list[float] = []

    async def connect(self) -> FakeResource:
        self.attempted_at.append(time.monotonic())
        resource = await super().connect()
        self.created_at.append(time.monotonic())
        return resource


async def test_an_outage_is_probed_one_connect_at_a_time_however_many_tasks_ask() -> None:
    # Twenty tasks keep asking during a one-second outage. Each new waiter
    # used to start a connect that tried at once and backed off on its own;
    # the pool now backs off as one: one attempt per backoff step.
    connector = _TimedConnector()
    connector.connect_fail = 1.0
    async with AsyncPool(connector, max_size=4, reconnect_delay=0.02, reconnect_max_delay=0.64) as pool:

        async def ask() -> None:
            with anyio.move_on_after(1.0):
                while True:
                    try:
                        async with pool.acquire(timeout=0.05):
                            pass
                    except PoolTimeout:
                        pass
                    await anyio.sleep(0.02)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(ask)
        attempts = connector.attempted_at
        # Backoff 0.02 s doubling, with jitter in [d/2, d]: at most 8 steps
        # fit in a second, plus the first attempts of the outage.
        assert 2 <= len(attempts) <= 14, len(attempts)


async def test_the_pool_refills_at_once_when_connecting_works_again() -> None:
    connector = _TimedConnector()
    connector.connect_fail = 1.0
    pool = AsyncPool(connector, min_size=4, max_size=4, reconnect_delay=0.05, reconnect_max_delay=1.0)
    await pool.open()
    await anyio.sleep(1.2)  # the backoff has grown to about a second
    connector.connect_fail = 0.0
    with anyio.fail_after(3):
        while pool.stats().idle < 4:
            await anyio.sleep(0.005)
    # The probe's success ends the outage for every waiting connect.
    assert connector.created_at[-1] - connector.created_at[0] < 0.1, connector.created_at
    await pool.close()
    connector.assert_all_closed_once()
