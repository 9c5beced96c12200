"""A resource its connector reports dead (``Connector.watch``) is never lent.

The report can come at any moment: while the resource is idle, handed to a
waiter that has not run yet, held by a caller, being reset, or just after a
validation answered. Wherever it is, it is retired before anyone else gets it,
and closed exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from asyncpool import AsyncPool

from .fakes import FakeConnector, FakeResource, check_invariants

pytestmark = pytest.mark.anyio


class WatchingConnector(FakeConnector):
    """Reports a resource's death to the pool the moment ``kill`` is called."""

    background_reset = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._dead: dict[int, Callable[[], None]] = {}
        #: Resources that die as their next validation answers ``True``.
        self.die_after_validation: set[int] = set()

    def watch(self, resource: FakeResource, dead: Callable[[], None]) -> None:
        self._dead[resource.ident] = dead

    def kill(self, resource: FakeResource) -> None:
        resource.dead = True
        self._dead.pop(resource.ident)()

    async def validate(self, resource: FakeResource) -> bool:
        ok = await super().validate(resource)
        if resource.ident in self.die_after_validation:
            self.die_after_validation.discard(resource.ident)
            self.kill(resource)  # after the check answered, before its task resumes
        return ok


class BackgroundWatchingConnector(WatchingConnector):
    background_reset = True


async def test_an_idle_resource_reported_dead_is_retired_at_once() -> None:
    connector = WatchingConnector()
    async with AsyncPool(connector, min_size=2, max_size=2) as pool:
        await pool.open(wait=True)
        first = connector.created[0]
        connector.kill(first)
        stats = pool.stats()
        assert (stats.idle, stats.health_failures, stats.destroyed) == (1, 1, 1), stats
        check_invariants(pool)
        with anyio.fail_after(2):
            while pool.stats().idle < 2:  # min_size is made up again
                await anyio.sleep(0.005)
        for _ in range(2):
            async with pool.acquire() as res:
                assert res is not first
    connector.assert_all_closed_once()


async def test_a_waiter_handed_a_resource_that_then_died_waits_again_and_gets_another() -> None:
    connector = WatchingConnector()
    async with AsyncPool(connector, max_size=1, timeout=5) as pool:
        held = await pool.acquire()
        got: list[FakeResource] = []

        async def waiter() -> None:
            async with pool.acquire() as res:
                got.append(res)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            while pool.stats().waiting < 1:
                await anyio.sleep(0.001)
            await pool.release(held)  # handed to the waiter, which has not run yet
            connector.kill(held)
            check_invariants(pool)
        assert len(got) == 1 and got[0] is not held, got
        stats = pool.stats()
        assert (stats.acquired, stats.health_failures, stats.timeouts) == (2, 1, 0), stats
        check_invariants(pool)
    connector.assert_all_closed_once()


async def test_a_resource_that_died_in_its_borrowers_hands_is_retired_on_release() -> None:
    connector = WatchingConnector()
    async with AsyncPool(connector, max_size=1) as pool:
        async with pool.acquire() as res:
            connector.kill(res)
            assert pool.stats().in_use == 1  # still the caller's
        async with pool.acquire() as again:
            assert again is not res
    connector.assert_all_closed_once()


async def test_a_resource_that_died_while_its_reset_ran_in_the_background_is_not_lent() -> None:
    connector = BackgroundWatchingConnector(reset_delay=0.05)
    async with AsyncPool(connector, min_size=2, max_size=2) as pool:
        await pool.open(wait=True)
        res = await pool.acquire()
        await pool.release(res)  # reset off the caller's path
        assert pool.stats().cleaning == 1
        connector.kill(res)  # its reset still finishes "fine"
        with anyio.fail_after(2):
            while pool.stats().cleaning:
                await anyio.sleep(0.005)
        for _ in range(3):
            async with pool.acquire() as other:
                assert other is not res
        check_invariants(pool)
    connector.assert_all_closed_once()


async def test_a_resource_that_died_as_its_validation_answered_is_not_lent() -> None:
    connector = WatchingConnector()
    async with AsyncPool(connector, min_size=1, max_size=2, validate_after=0.01) as pool:
        await pool.open(wait=True)
        first = connector.created[0]
        connector.die_after_validation.add(first.ident)
        await anyio.sleep(0.02)  # due for validation
        with anyio.fail_after(2):
            async with pool.acquire() as res:
                assert res is not first
        assert pool.stats().health_failures == 1
        check_invariants(pool)
    connector.assert_all_closed_once()


async def test_a_resource_that_died_as_its_health_check_answered_is_not_kept() -> None:
    connector = WatchingConnector()
    async with AsyncPool(connector, min_size=1, max_size=1, validate_after=0.01, health_check_interval=0.02) as pool:
        await pool.open(wait=True)
        first = connector.created[0]
        connector.die_after_validation.add(first.ident)
        with anyio.fail_after(2):
            while first.close_count == 0:
                await anyio.sleep(0.005)
        async with pool.acquire() as res:
            assert res is not first
    connector.assert_all_closed_once()


class DeadOnArrivalConnector(WatchingConnector):
    """The first resource dies in the very turn its connect returns: its
    death is reported as soon as the pool asks to hear of it (``watch``)."""

    async def connect(self) -> FakeResource:
        resource = await super().connect()
        if len(self.created) == 1:
            resource.dead = True
        return resource

    def watch(self, resource: FakeResource, dead: Callable[[], None]) -> None:
        if resource.dead:
            dead()
        else:
            super().watch(resource, dead)


class DeadOnArrivalClosedConnector(FakeConnector):
    """The same, known only through the local ``is_closed`` check."""

    async def connect(self) -> FakeResource:
        resource = await super().connect()
        if len(self.created) == 1:
            resource.dead = True
        return resource

    def is_closed(self, resource: FakeResource) -> bool:
        return resource.closed


@pytest.mark.parametrize("connector_class", [DeadOnArrivalConnector, DeadOnArrivalClosedConnector])
async def test_a_resource_dead_on_arrival_is_never_placed(connector_class: type[FakeConnector]) -> None:
    connector = connector_class()
    async with AsyncPool(connector, max_size=1, timeout=5) as pool:
        async with pool.acquire() as res:
            assert res is not connector.created[0]
        assert pool.stats().health_failures == 1
    connector.assert_all_closed_once()
