"""Randomized stress: hundreds of tasks, random cancels and timeouts, a
connector that randomly fails, hangs and hands out dead resources.

A monitor checks the accounting throughout; at the end every resource ever
created must have been closed exactly once.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest

from asyncpool import AsyncPool, PoolBusy, PoolClosed, PoolTimeout
from asyncpool._state import CLOCK_TICK

from .fakes import FakeConnector, FakeError, check_invariants

pytestmark = pytest.mark.anyio

#: Short bounds on everything, so that hangs and failures come and go fast.
_QUICK: dict[str, Any] = {
    "timeout": 0.2,
    "validate_after": 0.005,
    "connect_timeout": 0.05,
    "cleanup_timeout": 0.05,
    "reconnect_delay": 0.001,
    "reconnect_max_delay": 0.01,
}


def _unreliable_connector(seed: int, *, connect_fail: float, connect_hang: float) -> FakeConnector:
    """Fails, hangs and hands out dead resources now and then."""
    connector = FakeConnector(seed=seed, connect_delay=0.002, reset_delay=0.0005, validate_delay=0.0005)
    connector.connect_fail = connect_fail
    connector.connect_hang = connect_hang
    connector.reset_fail = 0.05
    connector.reset_hang = 0.02
    connector.validate_fail = 0.05
    connector.validate_hang = 0.02
    connector.dead_on_arrival = 0.05
    return connector


@pytest.mark.parametrize(
    ("seed", "validate_after"),
    # A window of ten ticks stamps releases with the coarse clock; the short
    # one keeps every stamp on the precise clock.
    [(1, 0.005), (2, 0.005), (3, 0.005), (4, 10 * CLOCK_TICK), (5, 10 * CLOCK_TICK)],
    ids=["precise-1", "precise-2", "precise-3", "coarse-4", "coarse-5"],
)
async def test_random_cancels_failures_and_hangs_leave_the_pool_whole(seed: int, validate_after: float) -> None:
    rng = random.Random(seed)
    connector = _unreliable_connector(seed, connect_fail=0.15, connect_hang=0.03)
    pool = AsyncPool(
        connector,
        min_size=2,
        max_size=8,
        max_waiting=150,
        health_check_interval=0.02,
        max_lifetime=0.3,
        max_idle=0.1,
        **{**_QUICK, "validate_after": validate_after},
    )
    await pool.open()
    outcomes = {"ok": 0, "timeout": 0, "busy": 0, "cancelled": 0, "error": 0}
    checks = 0
    stop = anyio.Event()

    async def monitor() -> None:
        nonlocal checks
        while not stop.is_set():
            check_invariants(pool)
            checks += 1
            await anyio.sleep(0.001)

    async def client(n: int) -> None:
        for _ in range(15):
            action = rng.random()
            with anyio.CancelScope() as scope:
                # Random cancellation deadlines land on any await inside; the
                # others are a handler's request timeout, which is also what
                # ends a reset that hangs in the releasing caller's task.
                if action < 0.3:
                    scope.deadline = anyio.current_time() + rng.uniform(0, 0.01)
                else:
                    scope.deadline = anyio.current_time() + 0.5
                try:
                    if action < 0.6:
                        async with pool.acquire(timeout=rng.choice([0.01, 0.05, 0.2])) as res:
                            if rng.random() < 0.1:
                                res.dead = True
                                raise FakeError("broke it")
                            await anyio.sleep(rng.uniform(0, 0.003))
                    else:
                        res = await pool.acquire(timeout=rng.choice([0.01, 0.05, 0.2]))
                        try:
                            await anyio.sleep(rng.uniform(0, 0.003))
                        finally:
                            if rng.random() < 0.1:
                                await pool.release(res, discard=True)
                            else:
                                await pool.release(res)
                    outcomes["ok"] += 1
                except PoolTimeout:
                    outcomes["timeout"] += 1
                except PoolBusy:
                    outcomes["busy"] += 1
                except FakeError:
                    outcomes["error"] += 1
            if scope.cancelled_caught:
                outcomes["cancelled"] += 1

    async with anyio.create_task_group() as outer:
        outer.start_soon(monitor)
        async with anyio.create_task_group() as tg:
            for n in range(300):
                tg.start_soon(client, n)
        stop.set()

    # Let background clean-up (bounded by cleanup_timeout) finish.
    await anyio.sleep(0.2)
    check_invariants(pool)
    stats = pool.stats()
    assert stats.in_use == 0, stats
    assert stats.waiting == 0, stats
    assert checks > 10
    assert outcomes["ok"] > 100, outcomes
    assert outcomes["cancelled"] > 50, outcomes
    assert outcomes["timeout"] + outcomes["busy"] > 0, outcomes
    with anyio.fail_after(5):
        await pool.close()
    with pytest.raises(PoolClosed):
        await pool.acquire()
    assert pool.stats().size == 0
    assert len(connector.created) > 8, "resources were churned"
    connector.assert_all_closed_once()


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("background_reset", [True, False], ids=["background-reset", "inline-reset"])
async def test_close_with_a_timeout_in_mid_stream_leaves_nothing_behind(seed: int, background_reset: bool) -> None:
    # close(timeout) lands while 60 clients acquire in every way there is
    # (async with, await + release, acquire_nowait, release(discard=True)
    # inside the block) and resets, validations and connects fail or hang.
    rng = random.Random(seed)
    connector = _unreliable_connector(seed, connect_fail=0.1, connect_hang=0.0)
    pool = AsyncPool(
        connector,
        min_size=2,
        max_size=6,
        health_check_interval=0.01,
        max_lifetime=0.2,
        max_idle=0.05,
        background_reset=background_reset,
        **_QUICK,
    )
    await pool.open()
    stop = anyio.Event()
    errors: list[BaseException] = []

    async def monitor() -> None:
        while not stop.is_set():
            try:
                check_invariants(pool)
            except AssertionError as exc:
                errors.append(exc)
                return
            await anyio.sleep(0.0005)

    async def client() -> None:
        for _ in range(40):
            action = rng.random()
            with anyio.CancelScope(deadline=anyio.current_time() + (rng.uniform(0, 0.01) if action < 0.3 else 0.5)):
                try:
                    if action < 0.5:
                        async with pool.acquire(timeout=rng.choice([0, 0.01, 0.05, None])) as resource:
                            if rng.random() < 0.1:
                                raise FakeError("raised in the block")
                            if rng.random() < 0.1:
                                await pool.release(resource, discard=rng.random() < 0.5)
                            await anyio.sleep(rng.uniform(0, 0.003))
                    elif action < 0.65:
                        try:
                            resource = pool.acquire_nowait()
                        except PoolBusy:
                            await anyio.sleep(0.001)
                            continue
                        await anyio.sleep(rng.uniform(0, 0.002))
                        await pool.release(resource, discard=rng.random() < 0.2)
                    else:
                        resource = await pool.acquire(timeout=rng.choice([0.01, 0.05]))
                        try:
                            await anyio.sleep(rng.uniform(0, 0.003))
                        finally:
                            await pool.release(resource)
                except (PoolTimeout, PoolBusy, PoolClosed, FakeError):
                    pass

    async with anyio.create_task_group() as outer:
        outer.start_soon(monitor)
        async with anyio.create_task_group() as clients:
            for _ in range(60):
                clients.start_soon(client)
            await anyio.sleep(0.15)
            with anyio.fail_after(3):
                await pool.close(timeout=rng.choice([0, 0.01, 0.03]))
        stop.set()
    await anyio.sleep(0.2)  # closes started by the last releases finish
    assert not errors, errors
    check_invariants(pool)
    assert pool.stats().size == 0, pool.stats()
    connector.assert_all_closed_once()
