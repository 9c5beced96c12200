"""Lending and returning: the behaviour every caller relies on."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from asyncpool import AsyncPool, PoolClosed, PoolError

from .fakes import FakeConnector, FakeError, FakeResource, check_invariants

pytestmark = pytest.mark.anyio


async def test_async_with_lends_and_returns(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=2) as pool:
        async with pool.acquire() as res:
            assert isinstance(res, FakeResource)
            assert pool.stats().in_use == 1
            check_invariants(pool)
        stats = pool.stats()
        assert (stats.in_use, stats.idle, stats.size, stats.acquired, stats.created) == (0, 1, 1, 1, 1)
        assert res.resets == 1
    connector.assert_all_closed_once()


async def test_await_acquire_then_release(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=2) as pool:
        res = await pool.acquire()
        assert pool.stats().in_use == 1
        await pool.release(res)
        assert pool.stats().idle == 1
        again = await pool.acquire()
        assert again is res, "the warmest idle resource is reused"
        await pool.release(again)


async def test_twenty_tasks_on_pool_of_five_never_hold_more_than_five(connector: FakeConnector) -> None:
    holding = 0
    peak = 0

    async def worker() -> None:
        nonlocal holding, peak
        for _ in range(10):
            async with pool.acquire() as res:
                assert not res.closed
                holding += 1
                peak = max(peak, holding)
                assert pool.stats().size <= 5
                check_invariants(pool)
                await anyio.sleep(0.001)
                holding -= 1

    async with AsyncPool(connector, max_size=5) as pool:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(worker)
        assert peak == 5
        assert pool.stats().acquired == 200
        assert len(connector.created) == 5
    connector.assert_all_closed_once()


async def test_exception_in_body_passes_through_and_resource_returns(connector: FakeConnector) -> None:
    class Boom(Exception):
        pass

    async with AsyncPool(connector, max_size=1) as pool:
        with pytest.raises(Boom) as info:
            async with pool.acquire() as res:
                raise Boom("from the handler")
        assert str(info.value) == "from the handler"
        assert pool.stats().idle == 1
        assert connector.validations == 1, "validated on its way back"
        async with pool.acquire() as again:
            assert again is res


async def test_resource_released_after_error_is_validated_before_reuse(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=1, validate_after=None) as pool:
        with pytest.raises(FakeError):
            async with pool.acquire() as res:
                res.dead = True  # the error broke the connection
                raise FakeError("query failed: connection lost")
        # The broken one was found out on release, never lent again.
        await anyio.sleep(0.01)
        assert res.close_count == 1
        async with pool.acquire() as fresh:
            assert fresh is not res
            assert not fresh.closed
        assert pool.stats().health_failures == 1


async def test_resource_killed_behind_the_pools_back_is_replaced(connector: FakeConnector) -> None:
    async with AsyncPool(connector, min_size=2, max_size=2, validate_after=0) as pool:
        await pool.open(wait=True)
        victims = list(connector.created)
        for res in victims:
            res.dead = True
        async with pool.acquire() as res:
            assert res not in victims
            assert not res.closed
        await anyio.sleep(0.01)
        assert all(v.close_count == 1 for v in victims)
        assert pool.stats().health_failures == 2


async def test_known_closed_resource_is_never_lent_even_when_fresh() -> None:
    made: list[FakeResource] = []

    async def factory() -> FakeResource:
        made.append(FakeResource(len(made)))
        return made[-1]

    # A plain factory: validation is "not closed", checked at no I/O cost
    # on every lend regardless of idle time.
    async with AsyncPool(factory, max_size=1, validate_after=None) as pool:
        async with pool.acquire() as first:
            pass
        first.dead = True
        async with pool.acquire() as second:
            assert second is not first
        assert pool.stats().health_failures == 1


async def test_release_of_foreign_resource_raises_and_changes_nothing(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=2) as pool:
        res = await pool.acquire()
        before = pool.stats()
        with pytest.raises(PoolError, match="did not lend"):
            await pool.release(FakeResource(999))
        assert pool.stats() == before
        await pool.release(res)
        after_first = pool.stats()
        with pytest.raises(PoolError, match="already released"):
            await pool.release(res)
        assert pool.stats() == after_first
        check_invariants(pool)


async def test_release_inside_async_with_is_not_repeated_on_exit(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=1) as pool:
        async with pool.acquire() as res:
            await pool.release(res)
            other = await pool.acquire()  # lent again to someone else
            assert other is res
        # Leaving the block must not release the other borrower's lease.
        assert pool.stats().in_use == 1
        await pool.release(other)
        assert pool.stats().in_use == 0


async def test_release_with_discard_closes_and_replaces(connector: FakeConnector) -> None:
    async with AsyncPool(connector, min_size=1, max_size=1) as pool:
        await pool.open(wait=True)
        res = await pool.acquire()
        await pool.release(res, discard=True)
        await anyio.sleep(0.05)
        assert res.close_count == 1
        assert pool.stats().size == 1, "min_size is kept up"
        async with pool.acquire() as fresh:
            assert fresh is not res


async def test_failed_reset_closes_and_replaces_for_a_waiter(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=1) as pool:
        res = await pool.acquire()
        got: list[Any] = []

        async def waiter() -> None:
            async with pool.acquire() as r:
                got.append(r)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.01)
            connector.reset_fail = 1.0
            await pool.release(res)  # reset raises: not the caller's problem
            connector.reset_fail = 0.0
        await anyio.sleep(0.01)
        assert res.close_count == 1
        assert got and got[0] is not res
        check_invariants(pool)


async def test_acquire_on_closed_pool_raises(connector: FakeConnector) -> None:
    pool = AsyncPool(connector)
    await pool.open()
    await pool.close()
    assert pool.closed
    with pytest.raises(PoolClosed):
        await pool.acquire()
    with pytest.raises(PoolClosed):
        async with pool.acquire():
            pass
    with pytest.raises(PoolClosed):
        await pool.open()


async def test_first_acquire_opens_the_pool(connector: FakeConnector) -> None:
    pool = AsyncPool(connector, max_size=1)
    assert "not open" in repr(pool)
    async with pool.acquire() as res:
        assert not res.closed
    assert "open" in repr(pool)
    await pool.close()
    connector.assert_all_closed_once()


async def test_plain_factory_closes_resources_with_their_own_close() -> None:
    closed: list[int] = []

    class Conn:
        def __init__(self, n: int) -> None:
            self.n = n
            self.closed = False

        async def aclose(self) -> None:
            self.closed = True
            closed.append(self.n)

    counter = iter(range(100))

    async def factory() -> Conn:
        return Conn(next(counter))

    async with AsyncPool(factory, max_size=3) as pool:
        async with pool.acquire(), pool.acquire():
            pass
    assert sorted(closed) == [0, 1]


async def test_repr_shows_live_state(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=3, name="db") as pool:
        async with pool.acquire():
            text = repr(pool)
            assert "'db'" in text
            assert "1 in use" in text
            assert "0 idle" in text
            assert "1/3" in text
        assert "1 idle" in repr(pool)
    assert "closed" in repr(pool)


async def test_acquire_nowait(connector: FakeConnector) -> None:
    async with AsyncPool(connector, max_size=1) as pool:
        async with pool.acquire():
            pass
        res = pool.acquire_nowait()
        from asyncpool import PoolBusy

        with pytest.raises(PoolBusy):
            pool.acquire_nowait()
        await pool.release(res)


class BackgroundResetConnector(FakeConnector):
    """Resets off the releasing caller's path, like the asyncpg full reset."""

    background_reset = True


async def test_background_reset_keeps_the_resource_across_many_leases() -> None:
    connector = BackgroundResetConnector(reset_delay=0.001)
    async with AsyncPool(connector, max_size=1) as pool:
        for _ in range(5):
            async with pool.acquire() as res:
                res.session["x"] = 1
            async with pool.acquire() as again:
                # Nobody gets the resource before it is clean.
                assert again.session == {}
        stats = pool.stats()
        assert stats.destroyed == 0, stats
        assert stats.created == 1, stats
        check_invariants(pool)
    connector.assert_all_closed_once()


async def test_background_reset_not_awaited_by_the_releasing_caller() -> None:
    connector = BackgroundResetConnector(reset_delay=0.3)
    async with AsyncPool(connector, min_size=2, max_size=2) as pool:
        await pool.open(wait=True)
        res = await pool.acquire()
        with anyio.fail_after(0.2):
            await pool.release(res)
        stats = pool.stats()
        # Released: the caller holds it no more; the pool is resetting it.
        assert (stats.in_use, stats.cleaning) == (0, 1), stats
        await anyio.sleep(0.5)
        assert pool.stats().idle == 2


async def test_background_reset_runs_inline_when_nothing_else_is_idle() -> None:
    connector = BackgroundResetConnector(reset_delay=0.1)
    async with AsyncPool(connector, max_size=1) as pool:
        res = await pool.acquire()
        await pool.release(res)  # the next acquire would wait for it anyway
        assert pool.stats().idle == 1
        assert res.resets == 1


async def test_background_reset_runs_inline_when_the_pool_is_more_than_half_busy() -> None:
    connector = BackgroundResetConnector(reset_delay=0.05)
    async with AsyncPool(connector, min_size=4, max_size=4) as pool:
        await pool.open(wait=True)
        held = [await pool.acquire() for _ in range(3)]
        # 3 in use, 1 idle: a task and a timer per release would cost more
        # than the wait they save, so the reset runs in the caller.
        await pool.release(held[0])
        assert held[0].resets == 1
        assert pool.stats().idle == 2
        # 2 in use, 2 idle: off the caller's path again.
        await pool.release(held[1])
        assert held[1].resets == 0, "reset in the caller"
        stats = pool.stats()
        assert (stats.in_use, stats.cleaning) == (1, 1), "one held, one being reset in the background"
        await pool.release(held[2])
        await anyio.sleep(0.2)
        assert pool.stats().idle == 4
        check_invariants(pool)


async def test_acquire_on_a_pool_closed_before_it_opened(connector: FakeConnector) -> None:
    pool = AsyncPool(connector)
    await pool.close()
    with pytest.raises(PoolClosed):
        await pool.acquire()
    with pytest.raises(PoolClosed):
        pool.acquire_nowait()


class SignallingResetConnector(BackgroundResetConnector):
    """Says when a reset ends, to wake a task in the same loop turn."""

    def __init__(self) -> None:
        super().__init__()
        self.reset_done = anyio.Event()

    async def reset(self, resource: FakeResource) -> None:
        await super().reset(resource)
        self.reset_done.set()


async def test_a_finished_background_reset_cannot_retire_the_resource_lent_after_it() -> None:
    # The clean-up task's done-callback runs a loop turn after the reset put
    # the resource back; an acquirer that takes it for validation in that
    # turn must not lose it to the callback.
    connector = SignallingResetConnector()
    async with AsyncPool(connector, min_size=2, max_size=2, validate_after=0) as pool:
        await pool.open(wait=True)
        first = await pool.acquire()
        got: list[FakeResource] = []

        async def acquirer() -> None:
            await connector.reset_done.wait()
            got.append(await pool.acquire())

        async with anyio.create_task_group() as tg:
            tg.start_soon(acquirer)
            await anyio.sleep(0)
            await pool.release(first)  # reset off the caller's path
        assert got and got[0].close_count == 0, got
        check_invariants(pool)
        await pool.release(got[0])
        await anyio.sleep(0.05)
        check_invariants(pool)
        assert pool.stats().destroyed == 0
    connector.assert_all_closed_once()
