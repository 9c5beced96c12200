"""The coarse clock: a release is stamped with a tick-refreshed time.

What must hold: validation after ``validate_after`` of idleness is never
skipped because that time lagged (a busy loop, a loop stopped between runs,
a clock jump, a timer that could not start), a resource used again at once
is not validated, and an idle pool stops ticking.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import anyio
import pytest
import trio
import trio.testing

from asyncpool import AsyncPool
from asyncpool._state import CLOCK_TICK

from .fakes import FakeConnector, FakeResource, check_invariants

WINDOW = 10 * CLOCK_TICK  # long enough for the coarse clock to be used


async def _lend_warm_while_cold_idles(
    pool: AsyncPool[FakeResource], connector: FakeConnector, idle_for: float, pause: float, *, quiet_loop: bool
) -> None:
    """Lend and take back one resource (``warm``) again and again, which
    keeps the ticks going, while the other (``cold``) sits idle for
    ``idle_for`` seconds; then lend both, ``cold`` validated first.

    On a ``quiet_loop`` the ticks must have kept going and ``warm`` must
    never have been validated; on a busy one, whose turns are longer than a
    tick, ticks may stop and start again, and ``warm``, idle a few long
    turns at a time, may be validated early.
    """
    cold = await pool.acquire()
    warm = await pool.acquire()
    await pool.release(cold)
    released = time.monotonic()
    await pool.release(warm)  # the warmest: lent first from now on
    with anyio.fail_after(10):
        while time.monotonic() - released <= idle_for:
            async with pool.acquire() as got:
                assert got is warm
            await anyio.sleep(pause)
        if quiet_loop:
            assert pool._state.coarse != math.inf, "the ticks stopped while the pool was busy"
        mark = len(connector.validated)
        async with pool.acquire() as first, pool.acquire() as second:
            assert (first, second) == (warm, cold)
            assert cold in connector.validated[mark:], "idle past the window, lent without validation"
    if quiet_loop:
        assert connector.validated == [cold]
    check_invariants(pool)


@pytest.mark.anyio
async def test_resource_idle_past_the_window_is_validated_while_the_pool_stays_busy(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=2, validate_after=WINDOW, health_check_interval=None) as pool:
        # Just past the window, by less than a tick: lending on a stamp-old
        # time instead of the clock would most often miss it.
        await _lend_warm_while_cold_idles(pool, connector, WINDOW + CLOCK_TICK / 10, CLOCK_TICK / 5, quiet_loop=True)


@pytest.mark.anyio
async def test_resource_used_again_at_once_is_not_validated(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=1, validate_after=WINDOW, health_check_interval=None) as pool:
        with anyio.fail_after(10):
            for _ in range(50):
                async with pool.acquire():
                    pass
                await anyio.sleep(CLOCK_TICK / 10)
        assert connector.validations == 0
        assert pool._state.coarse != math.inf


@pytest.mark.anyio
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
        # Idle: the next release is stamped with the precise clock and
        # restarts the ticks.
        async with pool.acquire():
            assert state.coarse == math.inf
        assert state.coarse != math.inf
        assert connector.validations == 0
    assert pool._state.coarse == math.inf, "still ticking after close()"


@pytest.mark.anyio
async def test_a_window_under_ten_ticks_uses_the_precise_clock_alone(connector: FakeConnector) -> None:
    window = 5 * CLOCK_TICK
    async with AsyncPool(connector, max_size=1, validate_after=window, health_check_interval=None) as pool:
        async with pool.acquire():
            pass
        async with pool.acquire():
            pass
        assert pool._state.coarse == math.inf, "stamps a tick old would validate too early"
        assert connector.validations == 0
        await anyio.sleep(2 * window)
        async with pool.acquire():
            pass
        assert connector.validations == 1


async def _busy(stop: anyio.Event, work: float) -> None:
    """Hold the loop for ``work`` seconds at a time, then yield: a loop
    that keeps time but whose turns, and so its timers, run late."""
    while not stop.is_set():
        until = time.perf_counter() + work
        while time.perf_counter() < until:
            pass
        await anyio.sleep(0)


@pytest.mark.anyio
async def test_a_busy_loop_whose_ticks_run_late_still_validates_on_time(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=2, validate_after=WINDOW, health_check_interval=None) as pool:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            for _ in range(40):  # loop turns of ~40 ms: ticks a turn or two late
                tg.start_soon(_busy, stop, 0.001)
            # Just past the window: a stamp that lagged would hide it.
            await _lend_warm_while_cold_idles(pool, connector, WINDOW + 0.01, 0, quiet_loop=False)
            stop.set()


@pytest.mark.anyio
async def test_a_timer_that_cannot_start_leaves_the_precise_clock_in_use(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=1, validate_after=WINDOW, health_check_interval=None) as pool:

        def refuse(interval: float, fn: Any) -> Any:
            raise RuntimeError("no timers here")

        pool._backend.repeat = refuse  # type: ignore[method-assign]
        for _ in range(3):
            async with pool.acquire() as resource:
                pass
            assert pool._state.coarse == math.inf, "a clock nobody refreshes"
            await anyio.sleep(2 * WINDOW)
        assert connector.validations == 2, "every lease after an idle spell validates"
        resource.dead = True
        async with pool.acquire() as fresh:
            assert fresh is not resource
        check_invariants(pool)


def test_a_loop_stopped_between_runs_does_not_lend_a_stale_resource_unvalidated() -> None:
    # One loop run again and again (``asyncio.Runner``, ``run_until_complete``):
    # while it is stopped nothing ticks, and the tick due when it runs again
    # comes after the first job's first step.
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1, validate_after=WINDOW, health_check_interval=None)

    async def lease() -> FakeResource:
        async with pool.acquire() as resource:
            return resource

    loop = asyncio.new_event_loop()
    try:
        first = loop.run_until_complete(lease())
        loop.run_until_complete(lease())
        time.sleep(2 * WINDOW)
        first.dead = True  # say the server dropped it while idle
        again = loop.run_until_complete(lease())
        loop.run_until_complete(pool.close())
    finally:
        loop.close()
    assert connector.validations == 1
    assert again is not first


def test_a_jump_of_trios_mock_clock_is_seen_by_the_next_lease() -> None:
    clock = trio.testing.MockClock()
    connector = FakeConnector()

    async def main() -> None:
        async with AsyncPool(connector, max_size=1, validate_after=1.0, health_check_interval=None) as pool:
            for _ in range(2):
                async with pool.acquire():
                    pass
            clock.jump(10)
            async with pool.acquire():
                pass
            assert connector.validations == 1, "idle 10 s on the run's clock, lent unvalidated"

    for _ in range(20):  # trio runs woken tasks in random order
        connector.validated.clear()
        trio.run(main, clock=clock)
