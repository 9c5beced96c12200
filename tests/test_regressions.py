"""Races and edge cases found in review, each pinned down by a test."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import anyio
import pytest

from asyncpool import AsyncPool, PoolBusy, PoolClosed, PoolError, PoolTimeout
from asyncpool._maintenance import run_health_check
from asyncpool._state import ASSIGNED, CLOSED, LEASED, backoff_delay

from .fakes import FakeConnector, FakeError, FakeResource, acquire_in_task, check_invariants, raised_in_thread

pytestmark = pytest.mark.anyio

ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
TRIO_ONLY = pytest.mark.parametrize("anyio_backend", [pytest.param(("trio", {}), id="trio")])


async def test_close_while_an_acquirer_validates_a_dead_resource_raises_pool_closed() -> None:
    connector = FakeConnector(validate_delay=0.2)
    pool = AsyncPool(connector, max_size=1, validate_after=0, health_check_interval=None)
    async with pool.acquire() as res:
        pass
    res.dead = True
    outcome: list[BaseException] = []

    async def acquirer() -> None:
        try:
            await pool.acquire(timeout=5)
        except BaseException as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(acquirer)
        await anyio.sleep(0.05)  # validating now
        with anyio.fail_after(2):
            await pool.close()
    assert len(outcome) == 1
    assert isinstance(outcome[0], PoolClosed)
    assert pool.stats().waiting == 0


@ASYNCIO_ONLY
@pytest.mark.parametrize("timeout", [None, 10.0], ids=["pool-timeout", "own-timeout"])
async def test_waiter_cancelled_in_the_same_turn_as_a_release_does_not_strand_the_resource(
    timeout: float | None,
) -> None:
    pool = AsyncPool(FakeConnector(), max_size=1, health_check_interval=None)
    held = await pool.acquire()
    waiter = asyncio.ensure_future(acquire_in_task(pool, timeout))
    await asyncio.sleep(0.01)
    got: list[FakeResource] = []

    async def releaser() -> None:
        await pool.release(held)
        got.append(await pool.acquire(timeout=1))

    async def canceller() -> None:
        waiter.cancel()

    await asyncio.gather(releaser(), canceller())
    assert got == [held]
    assert pool.stats().waiting == 0
    await asyncio.gather(waiter, return_exceptions=True)
    await pool.release(got[0])
    await pool.close()


@ASYNCIO_ONLY
@pytest.mark.parametrize("timeout", [None, 5.0], ids=["pool-timeout", "own-timeout"])
async def test_waiting_never_goes_negative_when_cancelled_as_the_pool_closes(timeout: float | None) -> None:
    pool = AsyncPool(FakeConnector(), max_size=1, health_check_interval=None)
    held = await pool.acquire()
    waiter = asyncio.ensure_future(acquire_in_task(pool, timeout))
    await asyncio.sleep(0.01)
    closer = asyncio.ensure_future(pool.close())
    waiter.cancel()
    await asyncio.sleep(0.01)
    assert pool.stats().waiting == 0
    check_invariants(pool)
    await pool.release(held)
    await closer
    await asyncio.gather(waiter, return_exceptions=True)
    assert pool.stats().waiting == 0


async def test_a_short_acquire_timeout_does_not_destroy_healthy_resources() -> None:
    connector = FakeConnector(validate_delay=0.05)
    pool = AsyncPool(connector, min_size=3, max_size=3, validate_after=0, health_check_interval=None)
    await pool.open(wait=True)
    await anyio.sleep(0.01)
    with pytest.raises(PoolTimeout):
        await pool.acquire(timeout=0.005)
    stats = pool.stats()
    assert stats.health_failures == 0, stats
    assert stats.destroyed <= 1, "at most the one interrupted mid-check"
    await pool.close()


async def test_concurrent_open_wait_calls_all_return() -> None:
    pool = AsyncPool(FakeConnector(connect_delay=0.02), min_size=2, max_size=2)
    done: list[int] = []

    async def opener(n: int) -> None:
        await pool.open(wait=True, timeout=2)
        done.append(n)

    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:
            tg.start_soon(opener, 1)
            tg.start_soon(opener, 2)
    assert sorted(done) == [1, 2]
    await pool.close()


async def test_validation_after_an_error_in_the_body_is_bounded() -> None:
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1, cleanup_timeout=0.2, health_check_interval=None)
    started = time.monotonic()
    with pytest.raises(FakeError):
        async with pool.acquire():
            connector.validate_hang = 1.0
            raise FakeError("query failed")
    assert time.monotonic() - started < 1.5
    connector.validate_hang = 0.0
    await anyio.sleep(0.05)
    assert pool.stats().in_use == 0
    await pool.close()
    connector.assert_all_closed_once()


async def test_acquire_nowait_on_a_pool_not_yet_open_is_busy() -> None:
    pool = AsyncPool(FakeConnector())
    with pytest.raises(PoolBusy):
        pool.acquire_nowait()


def give_back_unchecked(pool: AsyncPool[FakeResource], resource: FakeResource) -> None:
    """Give ``resource`` back as a borrower that gave up before validating it
    would: the pool's own paths do so only when nobody waits, so the tests
    that need tasks waiting reach it through the state directly."""
    state = pool._state
    entry = state.entries[id(resource)]
    entry.state = ASSIGNED
    entry.suspect = True
    state.give_back(entry)


@pytest.mark.parametrize("healthy", [True, False], ids=["healthy", "dead"])
async def test_a_suspect_entry_freed_while_tasks_wait_is_validated_before_anyone_gets_it(healthy: bool) -> None:
    """Hand-overs always come lent, so an entry that must be validated first
    is checked in the background and only then handed to the waiter (or
    retired and replaced). Reached through the state directly: the pool's
    own paths give such an entry back only when nobody waits."""
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1, health_check_interval=None)
    held = await pool.acquire()
    got: list[FakeResource] = []

    async def waiter() -> None:
        async with pool.acquire(timeout=5) as resource:
            got.append(resource)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        while pool.stats().waiting < 1:
            await anyio.sleep(0)
        held.dead = not healthy
        before = connector.validations
        give_back_unchecked(pool, held)
        check_invariants(pool)
    assert connector.validations == before + 1
    assert len(got) == 1
    if healthy:
        assert got[0] is held
    else:
        assert got[0] is not held and held.close_count == 1
    check_invariants(pool)
    await pool.close()
    assert all(resource.close_count == 1 for resource in connector.created)


async def test_a_second_release_while_the_resource_is_handed_over_raises_and_lends_it_once() -> None:
    """A hand-over comes lent before the waiter runs; releasing the resource
    again in that window must still be refused, not lend it twice."""
    pool = AsyncPool(FakeConnector(), max_size=1, health_check_interval=None)
    held = await pool.acquire()
    got: list[FakeResource] = []

    async def waiter() -> None:
        async with pool.acquire(timeout=5) as resource:
            got.append(resource)
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        while pool.stats().waiting < 1:
            await anyio.sleep(0)
        await pool.release(held)  # handed to ``waiter``, which has not run yet
        with pytest.raises(PoolError, match="already released"):
            await pool.release(held)
        await anyio.sleep(0.01)
        assert got == [held]
        with pytest.raises(PoolBusy):  # still the waiter's
            pool.acquire_nowait()
    check_invariants(pool)
    await pool.close()


def test_a_contended_acquire_from_another_loop_raises_pool_error_and_changes_nothing() -> None:
    pool = AsyncPool(FakeConnector(), max_size=2, health_check_interval=None, timeout=None)

    async def first_run() -> None:
        await pool.open()

    asyncio.run(first_run())  # the pool's loop is closed now
    before = pool.stats()

    async def second_run() -> None:
        await pool.acquire()

    with pytest.raises(PoolError, match="another event loop"):
        asyncio.run(second_run())
    after = pool.stats()
    assert (after.size, after.waiting) == (before.size, before.waiting), (before, after)


def test_a_pool_whose_loop_moved_to_another_thread_still_lets_tasks_wait() -> None:
    """The wait queue's cheap loop test (the pool's loop running on the
    thread that opened it) fails once the loop runs on another thread; the
    exact test must then let the wait go ahead, not raise PoolError."""
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1, health_check_interval=None, timeout=5)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(pool.open())

    async def contended() -> None:
        held = await pool.acquire()
        waiter = asyncio.ensure_future(pool.acquire())
        while pool.stats().waiting < 1:
            await asyncio.sleep(0)
        await pool.release(held)
        assert await waiter is held
        await pool.release(held)
        await pool.close()

    error = raised_in_thread(lambda: loop.run_until_complete(contended()))
    loop.close()
    assert error is None
    connector.assert_all_closed_once()


@TRIO_ONLY
async def test_an_acquire_checkpoint_cancelled_after_close_destroyed_its_resource_closes_it_once() -> None:
    import trio

    for _ in range(40):  # trio runs a batch in random order: try both
        connector = FakeConnector()
        pool = AsyncPool(connector, max_size=1, health_check_interval=None)
        async with pool.acquire():
            pass
        scope = trio.CancelScope()

        async def user(pool: AsyncPool[FakeResource] = pool, scope: trio.CancelScope = scope) -> None:
            with scope, contextlib.suppress(PoolClosed):
                async with pool.acquire():
                    await trio.sleep_forever()

        async def closer(pool: AsyncPool[FakeResource] = pool, scope: trio.CancelScope = scope) -> None:
            scope.cancel()
            with trio.move_on_after(1):
                await pool.close(timeout=0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(user)
            nursery.start_soon(closer)
        await trio.sleep(0.01)
        assert pool.stats().size == 0, pool.stats()
        connector.assert_all_closed_once()


@TRIO_ONLY
async def test_a_waiter_is_never_handed_a_resource_that_close_already_destroyed() -> None:
    import trio

    for _ in range(40):  # trio runs a batch in random order: try both
        connector = FakeConnector()
        pool = AsyncPool(connector, max_size=1, health_check_interval=None)
        held = await pool.acquire()
        got: list[tuple[FakeResource, int]] = []
        refused: list[BaseException] = []

        async def waiter(
            pool: AsyncPool[FakeResource] = pool,
            got: list[tuple[FakeResource, int]] = got,
            refused: list[BaseException] = refused,
        ) -> None:
            try:
                resource = await pool.acquire(timeout=5)
            except PoolClosed as exc:
                refused.append(exc)
            else:
                # Closed under its borrower later is what close(timeout=0)
                # does; destroyed before it was returned is not.
                got.append((resource, pool._state.entries[id(resource)].state))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            while pool.stats().waiting < 1:
                await trio.sleep(0)
            await pool.release(held)  # handed to ``waiter``
            await pool.close(timeout=0)  # destroys lent resources
        assert len(got) + len(refused) == 1
        assert all(state == LEASED for _, state in got), "acquire() returned a resource close() had destroyed"
        for resource, _ in got:
            await pool.release(resource)
        assert pool.stats().size == 0
        connector.assert_all_closed_once()


@ASYNCIO_ONLY
async def test_a_finished_background_check_does_not_retire_an_entry_a_later_health_check_took() -> None:
    """The done-callback of a background check runs a loop turn after the
    check; by then the health check may have taken the same entry."""
    loop = asyncio.get_running_loop()
    gates = [loop.create_future()]

    class Gated(FakeConnector):
        async def validate(self, resource: FakeResource) -> bool:
            self.validated.append(resource)
            await gates[-1]
            return True

    pool = AsyncPool(Gated(), max_size=1, health_check_interval=None, validate_after=None)
    held = await pool.acquire()
    waiter = asyncio.ensure_future(acquire_in_task(pool, 5))
    while pool.stats().waiting < 1:
        await asyncio.sleep(0)
    give_back_unchecked(pool, held)  # checked in the background
    waiter.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the background check waits on gates[0]
    gates[0].set_result(None)
    gates.append(loop.create_future())
    await asyncio.sleep(0)  # the check finished (idle); its done-callback is queued after us
    loop.call_later(0.05, gates[-1].set_result, None)
    await run_health_check(pool)
    check_invariants(pool)
    await asyncio.gather(waiter, return_exceptions=True)
    await pool.close()


@ASYNCIO_ONLY
async def test_a_background_check_cancelled_before_it_ran_retires_its_entry_and_settles_its_slot() -> None:
    """asyncio never runs a coroutine whose task was cancelled before its
    first step; the check's done-callback must settle the entry instead."""
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1, health_check_interval=None)
    held = await pool.acquire()
    waiter = asyncio.ensure_future(acquire_in_task(pool, 5))
    while pool.stats().waiting < 1:
        await asyncio.sleep(0)
    before = {id(task) for task in asyncio.all_tasks()}
    give_back_unchecked(pool, held)  # checked in the background
    (check,) = [task for task in asyncio.all_tasks() if id(task) not in before]
    check.cancel()
    got = await asyncio.wait_for(waiter, 2)
    assert got is not held, "lent without its check"
    assert held.close_count == 1
    assert connector.validations == 0
    check_invariants(pool)
    await pool.release(got)
    await pool.close()
    connector.assert_all_closed_once()


# -- second review: interrupted validations, close() bounds, idle clock ---------


class _Interrupt(BaseException):
    """A BaseException that is not the backend's cancellation."""


class _InterruptingValidate(FakeConnector):
    interrupt = False

    async def validate(self, resource: FakeResource) -> bool:
        if self.interrupt:
            raise _Interrupt()
        return await super().validate(resource)


async def test_a_validation_interrupted_by_any_base_exception_retires_its_entry() -> None:
    connector = _InterruptingValidate()
    pool = AsyncPool(connector, max_size=1, validate_after=0, health_check_interval=None, cleanup_timeout=0.2)
    async with pool.acquire():
        pass
    connector.interrupt = True
    with pytest.raises(_Interrupt):
        await pool.acquire(timeout=1)
    connector.interrupt = False
    check_invariants(pool)
    assert pool.stats().in_use == 0, pool.stats()
    with anyio.fail_after(2):
        async with pool.acquire(timeout=1):  # a replacement
            pass
        await pool.close(timeout=0.1)
    connector.assert_all_closed_once()


class _NurseryValidate(FakeConnector):
    """Validates inside a nursery: a cancellation arrives wrapped in an
    exception group (trio's strict groups), not as a bare ``Cancelled``."""

    async def validate(self, resource: FakeResource) -> bool:
        import trio

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 0.3)
        return not resource.closed


@TRIO_ONLY
async def test_trio_acquire_cancelled_during_a_nursery_validation_leaks_no_slot() -> None:
    pool = AsyncPool(_NurseryValidate(), max_size=1, validate_after=0, health_check_interval=None)
    async with pool.acquire():
        pass
    with anyio.move_on_after(0.05):
        await pool.acquire(timeout=5)
    check_invariants(pool)
    assert pool.stats().in_use == 0, pool.stats()
    with anyio.fail_after(2):
        await pool.close(timeout=0.1)


@TRIO_ONLY
async def test_trio_close_during_a_nursery_health_check_does_not_hang() -> None:
    pool = AsyncPool(_NurseryValidate(), max_size=1, min_size=1, validate_after=0, health_check_interval=0.05)
    await pool.open(wait=True)
    await anyio.sleep(0.1)  # the health check is validating the idle resource now
    with anyio.fail_after(2):
        await pool.close()


@TRIO_ONLY
async def test_trio_uncontended_acquire_never_returns_a_resource_close_destroyed_at_its_checkpoint() -> None:
    destroyed = 0
    for _ in range(40):  # trio runs each batch of tasks in a random order
        pool = AsyncPool(FakeConnector(), max_size=1, health_check_interval=None)
        async with pool.acquire():
            pass
        got: list[tuple[FakeResource, int]] = []

        async def user(pool: AsyncPool[FakeResource] = pool, got: list[tuple[FakeResource, int]] = got) -> None:
            try:
                resource = await pool.acquire()
            except PoolClosed:
                return
            got.append((resource, pool._state.entries[id(resource)].state))

        async with anyio.create_task_group() as tg:
            tg.start_soon(user)
            tg.start_soon(pool.close, 0)
        destroyed += sum(state == CLOSED for _, state in got)
        for resource, _ in got:
            await pool.release(resource)
    assert destroyed == 0, f"{destroyed}/40 acquires returned a resource close() had destroyed"


async def test_close_timeout_is_not_held_up_by_a_validation_in_flight(connector: FakeConnector) -> None:
    pool = AsyncPool(connector, max_size=1, validate_after=0, health_check_interval=None, cleanup_timeout=3)
    async with pool.acquire():
        pass
    connector.validate_hang = 1.0

    async def acquirer() -> None:
        with pytest.raises(PoolClosed):
            await pool.acquire(timeout=10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(acquirer)
        await anyio.sleep(0.05)  # the acquirer validates now
        started = anyio.current_time()
        await pool.close(timeout=0.1)
        took = anyio.current_time() - started
    assert took < 1.0, f"close(timeout=0.1) took {took:.2f} s"
    check_invariants(pool)
    assert pool.stats().size == 0


async def test_giving_back_an_unused_resource_keeps_its_idle_age(connector: FakeConnector) -> None:
    pool = AsyncPool(connector, max_size=1, max_idle=0.1, validate_after=0.05, health_check_interval=None)
    async with pool.acquire():
        pass
    await anyio.sleep(0.15)  # idle past max_idle, and due for validation
    with pytest.raises(PoolBusy):
        pool.acquire_nowait()  # finds it due for validation and gives it back
    pool._state.evict_idle()
    assert pool.stats().idle == 0, "acquire_nowait() restarted the idle clock"
    await pool.close()


async def _acquire_refusably(pool: AsyncPool[FakeResource], option: dict[str, float]) -> FakeResource:
    """``acquire()`` on a pool built with ``option`` (which makes it refuse
    rather than wait), or ``acquire_nowait()`` when ``option`` is empty."""
    return await pool.acquire() if option else pool.acquire_nowait()


@pytest.mark.parametrize(
    "option", [{"max_waiting": 0}, {"timeout": 0}, {}], ids=["max_waiting=0", "timeout=0", "acquire_nowait"]
)
async def test_a_pool_nobody_may_wait_on_still_grows(connector: FakeConnector, option: dict[str, float]) -> None:
    pool = AsyncPool(connector, max_size=2, health_check_interval=None, **option)  # type: ignore[arg-type]
    await pool.open()
    turned_away = 0
    with anyio.fail_after(5):
        while True:
            try:
                resource = await _acquire_refusably(pool, option)
                break
            except (PoolBusy, PoolTimeout):
                turned_away += 1
                check_invariants(pool)
                assert pool.stats().size <= 1  # one connect at a time, not one per refusal
                await anyio.sleep(0.001)
    assert turned_away >= 1
    await pool.release(resource)
    await pool.close()
    connector.assert_all_closed_once()


@pytest.mark.parametrize("timeout", [-1, math.nan])
async def test_open_and_close_reject_a_bad_timeout_and_change_nothing(connector: FakeConnector, timeout: float) -> None:
    pool = AsyncPool(connector, min_size=1, max_size=1)
    with pytest.raises(ValueError, match="timeout"):
        await pool.open(wait=True, timeout=timeout)
    await pool.open(wait=True)
    held = await pool.acquire()
    with pytest.raises(ValueError, match="timeout"):
        await pool.close(timeout=timeout)
    assert not pool.closed
    await pool.release(held)
    await pool.close(timeout=0)
    connector.assert_all_closed_once()


@pytest.mark.parametrize(
    "option", [{"max_waiting": 0}, {"timeout": 0}, {}], ids=["max_waiting=0", "timeout=0", "acquire_nowait"]
)
async def test_refused_acquires_during_an_outage_reconnect_with_backoff(
    connector: FakeConnector, option: dict[str, float]
) -> None:
    connector.connect_fail = 1.0  # the server is down
    pool = AsyncPool(connector, max_size=5, health_check_interval=None, **option)  # type: ignore[arg-type]
    await pool.open()
    refused = 0
    with anyio.move_on_after(1.0):
        while True:
            try:
                await _acquire_refusably(pool, option)
            except (PoolBusy, PoolTimeout):
                refused += 1
            check_invariants(pool)
            await anyio.sleep(0.002)
    # Waiters reconnect with reconnect_delay=0.1 doubling: ~4 attempts a second.
    assert refused > 100
    assert connector.connect_attempts <= 10, f"{connector.connect_attempts} connects for {refused} refusals"
    connector.connect_fail = 0.0
    with anyio.fail_after(10):  # and it still recovers once the server is back
        while True:
            try:
                resource = await _acquire_refusably(pool, option)
                break
            except (PoolBusy, PoolTimeout):
                await anyio.sleep(0.01)
    await pool.release(resource)
    await pool.close()
    connector.assert_all_closed_once()


def test_backoff_survives_a_long_outage() -> None:
    # Some 1,000 attempts at the 5 s cap (about 1.5 h down) overflowed the
    # doubling and crashed the connect worker.
    for attempt in (0, 3, 1100, 10**6):
        delay = backoff_delay(attempt, 0.1, 5.0)
        expected = min(5.0, 0.1 * 2.0 ** min(attempt, 10))
        assert expected / 2 <= delay <= expected
