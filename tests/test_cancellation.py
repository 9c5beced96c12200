"""Cancel a task at every await point: the pool stays whole.

Each test parks a task at one await (a gate in the connector tells the test
it has arrived), cancels it there, then checks the accounting and that every
resource ever created is closed exactly once after ``close()``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from asyncpool import AsyncPool

from .fakes import FakeConnector, FakeResource, acquire_in_task, check_invariants

pytestmark = pytest.mark.anyio


class GatedConnector(FakeConnector):
    """A fake connector whose chosen method blocks until the test opens it."""

    def __init__(self, gated: str) -> None:
        super().__init__(seed=7)
        self.gated = gated
        self.arrived = anyio.Event()
        self.gate = anyio.Event()

    async def _gate(self, name: str) -> None:
        if name == self.gated and not self.gate.is_set():
            self.arrived.set()
            await self.gate.wait()

    async def connect(self) -> FakeResource:
        await self._gate("connect")
        return await super().connect()

    async def validate(self, resource: FakeResource) -> bool:
        await self._gate("validate")
        return await super().validate(resource)

    async def reset(self, resource: FakeResource) -> None:
        await self._gate("reset")
        await super().reset(resource)


async def _close_and_check(pool: AsyncPool[Any], connector: FakeConnector) -> None:
    check_invariants(pool)
    with anyio.fail_after(5):
        await pool.close()
    assert pool.stats().size == 0
    connector.assert_all_closed_once()


async def test_cancel_while_waiting_in_queue() -> None:
    connector = FakeConnector()
    async with AsyncPool(connector, max_size=1) as pool:
        held = await pool.acquire()
        with anyio.move_on_after(0.05):
            await pool.acquire(timeout=10)
        stats = pool.stats()
        assert stats.waiting == 0
        check_invariants(pool)
        await pool.release(held)
        assert pool.stats().idle == 1, "nobody phantom-waits for it"
        async with pool.acquire() as again:
            assert again is held
    connector.assert_all_closed_once()


async def test_cancel_while_the_resource_is_being_created() -> None:
    connector = GatedConnector("connect")
    pool = AsyncPool(connector, max_size=1)
    async with anyio.create_task_group() as tg:

        async def acquirer() -> None:
            await pool.acquire(timeout=10)

        tg.start_soon(acquirer)
        await connector.arrived.wait()
        tg.cancel_scope.cancel()
    assert pool.stats().size == 1, "the connect goes on for the pool"
    connector.gate.set()
    await anyio.sleep(0.05)
    stats = pool.stats()
    assert (stats.size, stats.idle, stats.in_use) == (1, 1, 0), stats
    await _close_and_check(pool, connector)


async def test_cancel_while_the_resource_is_being_validated() -> None:
    connector = GatedConnector("validate")
    pool = AsyncPool(connector, max_size=2, validate_after=0)
    async with pool.acquire():
        pass
    await anyio.sleep(0.01)
    async with anyio.create_task_group() as tg:

        async def acquirer() -> None:
            await pool.acquire(timeout=10)

        tg.start_soon(acquirer)
        await connector.arrived.wait()
        tg.cancel_scope.cancel()
    connector.gate.set()
    await anyio.sleep(0.05)
    # Interrupted mid-check: retired, never lent in an unknown state.
    assert connector.created[0].close_count == 1
    assert pool.stats().in_use == 0
    await _close_and_check(pool, connector)


async def test_cancel_inside_the_body_returns_the_resource() -> None:
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1)
    with anyio.move_on_after(0.05):
        async with pool.acquire() as res:
            res.session["role"] = "admin"
            await anyio.sleep(10)
    await anyio.sleep(0.05)
    stats = pool.stats()
    assert (stats.in_use, stats.idle) == (0, 1), stats
    assert res.session == {}, "reset ran in the background"
    assert connector.validations == 1, "an interrupted body makes the resource suspect"
    async with pool.acquire() as again:
        assert again is res
    await _close_and_check(pool, connector)


async def test_cancel_during_release_reset() -> None:
    connector = GatedConnector("reset")
    pool = AsyncPool(connector, max_size=1, min_size=1)
    await pool.open(wait=True)
    res = await pool.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.release, res)
        await connector.arrived.wait()
        tg.cancel_scope.cancel()
    await anyio.sleep(0.05)
    # Half-reset: closed in the background and replaced (min_size=1).
    assert res.close_count == 1
    connector.gate.set()
    await anyio.sleep(0.05)
    stats = pool.stats()
    assert (stats.size, stats.idle, stats.in_use) == (1, 1, 0), stats
    await _close_and_check(pool, connector)


async def test_cancel_during_close() -> None:
    connector = FakeConnector(close_delay=0.1)
    pool = AsyncPool(connector, min_size=3, max_size=3)
    await pool.open(wait=True)
    held = await pool.acquire()
    with anyio.move_on_after(0.02):
        await pool.close()
    assert pool.closed
    await pool.release(held)  # still accepted, and closed
    with anyio.fail_after(2):
        await pool.close()
    connector.assert_all_closed_once()


async def test_task_group_cancelled_while_tasks_hold_and_wait() -> None:
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=3)

    async def worker() -> None:
        async with pool.acquire(timeout=10):
            await anyio.sleep(10)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(worker)
        while pool.stats().waiting < 7:
            await anyio.sleep(0.001)
        tg.cancel_scope.cancel()
    await anyio.sleep(0.05)
    stats = pool.stats()
    assert (stats.in_use, stats.waiting, stats.idle) == (0, 0, 3), stats
    await _close_and_check(pool, connector)


async def test_fail_after_around_acquire_and_body() -> None:
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1)
    held = await pool.acquire()
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.05):
            await pool.acquire(timeout=10)
    await pool.release(held)
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.05):
            async with pool.acquire():
                await anyio.sleep(10)
    await anyio.sleep(0.05)
    assert pool.stats().idle == 1
    await _close_and_check(pool, connector)


async def test_release_in_finally_of_a_cancelled_scope() -> None:
    """The classic ``try/finally: await pool.release(conn)`` under cancellation."""
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1)
    with anyio.CancelScope() as scope:
        conn = await pool.acquire()
        try:
            scope.cancel()
            await anyio.sleep(1)
        finally:
            await pool.release(conn)
    await anyio.sleep(0.05)
    stats = pool.stats()
    assert stats.in_use == 0, stats
    # Under trio the reset is shielded and the resource kept; on asyncio the
    # scope cancels the reset again, so it is closed and not lent half-reset.
    assert stats.idle + stats.destroyed == 1
    await _close_and_check(pool, connector)


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
@pytest.mark.parametrize("timeout", [None, 10.0], ids=["pool-timeout", "own-timeout"])
async def test_handed_over_then_cancelled_in_the_same_turn_goes_to_the_next(timeout: float | None) -> None:
    """asyncio only: a future can get its result and its task be cancelled
    in the same loop iteration; the entry must not be lost."""
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1)
    held = await pool.acquire()
    first = asyncio.ensure_future(acquire_in_task(pool, timeout))
    second = asyncio.ensure_future(acquire_in_task(pool, timeout))
    while pool.stats().waiting < 2:
        await asyncio.sleep(0)
    await pool.release(held)  # handed to ``first``...
    first.cancel()  # ...which is cancelled before it runs
    got = await asyncio.wait_for(second, 1)
    assert got is held
    assert first.cancelled()
    await pool.release(got)
    await _close_and_check(pool, connector)


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_background_task_cancelled_before_it_ran_settles_its_slot() -> None:
    """asyncio never runs a coroutine whose task was cancelled before its
    first step, so its own ``finally`` cannot be relied on."""
    connector = FakeConnector()
    pool = AsyncPool(connector, min_size=2, max_size=2)
    await pool.open()
    assert pool.stats().size == 2  # two connect tasks, not started yet
    await pool.close()
    assert pool.stats().size == 0
    assert connector.connect_attempts == 0


async def test_cancel_during_the_reset_on_leaving_async_with() -> None:
    connector = GatedConnector("reset")
    pool = AsyncPool(connector, max_size=1, min_size=1)
    await pool.open(wait=True)

    async def borrower() -> None:
        async with pool.acquire():
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(borrower)
        await connector.arrived.wait()
        tg.cancel_scope.cancel()
    await anyio.sleep(0.05)
    # Half-reset: closed and replaced, never lent like that.
    assert connector.created[0].close_count == 1
    connector.gate.set()
    await anyio.sleep(0.05)
    stats = pool.stats()
    assert (stats.size, stats.idle, stats.in_use) == (1, 1, 0), stats
    await _close_and_check(pool, connector)


async def test_cancelled_acquire_of_an_idle_resource_keeps_it(backend_name: str) -> None:
    """Under trio an acquire that finds a resource idle is still a
    checkpoint; cancelled there, the resource stays in the pool."""
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1)
    async with pool.acquire():
        pass
    held: FakeResource | None = None
    with anyio.CancelScope() as scope:
        scope.cancel()
        held = await pool.acquire()
    if held is None:
        assert backend_name == "trio"
    else:
        # asyncio does not yield when nothing need be waited for.
        assert backend_name == "asyncio"
        await pool.release(held)
    stats = pool.stats()
    assert (stats.idle, stats.in_use) == (1, 0), stats
    await _close_and_check(pool, connector)


async def test_borrowers_cancelled_in_their_blocks_are_not_in_use_once_they_are_gone() -> None:
    # The clean-up after a cancelled block (reset and validation) runs in
    # the background; the borrowers are gone the moment their scope exits,
    # so ``in_use`` is 0 then and the clean-ups show in ``cleaning``.
    connector = FakeConnector(reset_delay=0.05, validate_delay=0.05)
    async with AsyncPool(connector, min_size=8, max_size=8) as pool:
        await pool.open(wait=True)
        held = 0

        async def borrow() -> None:
            nonlocal held
            async with pool.acquire():
                held += 1
                await anyio.sleep(10)

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(borrow)
                while held < 8:
                    await anyio.sleep(0.001)
                assert pool.stats().in_use == 8
                scope.cancel()
        stats = pool.stats()
        assert stats.in_use == 0, stats
        assert stats.cleaning == 8, stats
        assert stats.size == 8, stats
        check_invariants(pool)
        with anyio.fail_after(2):
            while pool.stats().idle < 8:
                await anyio.sleep(0.01)
        stats = pool.stats()
        assert (stats.in_use, stats.cleaning, stats.idle) == (0, 0, 8), stats
    connector.assert_all_closed_once()


async def test_a_resource_being_closed_counts_in_size_until_its_close_has_finished() -> None:
    # Closing is I/O: until it has finished the resource still exists (a
    # server still holds its session), so the pool may not replace it past
    # max_size in the meantime.
    connector = FakeConnector(close_delay=0.1)
    async with AsyncPool(connector, min_size=1, max_size=1) as pool:
        await pool.open(wait=True)
        res = await pool.acquire()
        await pool.release(res, discard=True)
        stats = pool.stats()
        assert (stats.size, stats.in_use, stats.cleaning, stats.connecting) == (1, 0, 1, 0), stats
        check_invariants(pool)
        with anyio.fail_after(2):
            again = await pool.acquire()
        assert again is not res
        assert res.close_count == 1
        await pool.release(again)
    connector.assert_all_closed_once()
