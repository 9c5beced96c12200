"""The coarse clock: the hot paths read a tick-refreshed time, not the clock.

What must hold: validation after ``validate_after`` of idleness is never
skipped because the tick-refreshed time lagged, a resource used again at
once is not validated, and an idle pool stops ticking.
"""

from __future__ import annotations

import math

import anyio
import pytest

from asyncpool import AsyncPool
from asyncpool._state import CLOCK_TICK

from .fakes import FakeConnector, check_invariants

pytestmark = pytest.mark.anyio

WINDOW = 4 * CLOCK_TICK  # long enough for the coarse clock to be used


async def test_resource_idle_past_the_window_is_validated_while_the_pool_stays_busy(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=2, validate_after=WINDOW, health_check_interval=None) as pool:
        cold = await pool.acquire()
        warm = await pool.acquire()
        await pool.release(cold)
        await pool.release(warm)  # the warmest: lent first from now on
        # Keep the pool busy with ``warm`` (so the ticks go on) while
        # ``cold`` sits idle for well over the window.
        with anyio.fail_after(10):
            started = anyio.current_time()
            while anyio.current_time() - started < 2 * WINDOW:
                async with pool.acquire() as got:
                    assert got is warm
                await anyio.sleep(CLOCK_TICK / 5)
        assert pool._state.coarse != math.inf, "the ticks stopped while the pool was busy"
        assert connector.validations == 0
        async with pool.acquire() as first, pool.acquire() as second:
            assert (first, second) == (warm, cold)
            assert connector.validations == 1, "the idle one was lent without validation"
        check_invariants(pool)


async def test_resource_used_again_at_once_is_not_validated(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=1, validate_after=WINDOW, health_check_interval=None) as pool:
        with anyio.fail_after(10):
            for _ in range(50):
                async with pool.acquire():
                    pass
                await anyio.sleep(CLOCK_TICK / 10)
        assert connector.validations == 0
        assert pool._state.coarse != math.inf


async def test_an_idle_pool_stops_ticking_and_a_lease_starts_it_again(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=1, validate_after=WINDOW, health_check_interval=None) as pool:
        state = pool._state
        assert state.coarse == math.inf, "ticking before anything was lent"
        async with pool.acquire():
            pass
        assert state.coarse != math.inf
        with anyio.fail_after(10):
            while state.coarse != math.inf:
                await anyio.sleep(CLOCK_TICK)
        # Idle: the next lease is made on the precise clock and restarts it.
        async with pool.acquire():
            assert state.coarse != math.inf
        assert connector.validations == 0
    assert pool._state.coarse == math.inf, "still ticking after close()"


async def test_a_window_under_two_ticks_uses_the_precise_clock_alone(connector: FakeConnector) -> None:
    window = CLOCK_TICK / 2
    async with AsyncPool(connector, max_size=1, validate_after=window, health_check_interval=None) as pool:
        async with pool.acquire():
            pass
        async with pool.acquire():
            pass
        assert pool._state.coarse == math.inf, "a tick would be coarser than the window"
        assert connector.validations == 0
        await anyio.sleep(2 * window)
        async with pool.acquire():
            pass
        assert connector.validations == 1
