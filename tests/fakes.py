"""An in-process connector whose latency and failures the tests control.

It works under every backend the pool supports (it only sleeps through
anyio), and it records every resource it made and every close, so a test
can prove that each resource was closed exactly once.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from asyncpool import AsyncPool


class FakeError(Exception):
    """Raised by the fake connector when told to fail."""


@dataclass(eq=False)
class FakeResource:
    """One fake connection."""

    ident: int
    close_count: int = 0
    #: Killed behind the pool's back: validation fails, ``closed`` is true.
    dead: bool = False
    resets: int = 0
    #: Arbitrary per-lease state a test can set to check that reset clears it.
    session: dict[str, object] = field(default_factory=dict)

    @property
    def closed(self) -> bool:
        return self.dead or self.close_count > 0

    def __repr__(self) -> str:
        return f"<FakeResource {self.ident}>"


class FakeConnector:
    """A ``Connector[FakeResource]`` with knobs.

    Delays are seconds; ``*_fail`` are probabilities (or ``True``); a
    ``*_hang`` of ``True`` makes the call sleep forever (until cancelled).
    """

    def __init__(
        self,
        *,
        connect_delay: float = 0.0,
        reset_delay: float = 0.0,
        validate_delay: float = 0.0,
        close_delay: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.connect_delay = connect_delay
        self.reset_delay = reset_delay
        self.validate_delay = validate_delay
        self.close_delay = close_delay
        self.connect_fail: float = 0.0
        self.reset_fail: float = 0.0
        self.validate_fail: float = 0.0
        self.connect_hang: float = 0.0
        self.reset_hang: float = 0.0
        self.validate_hang: float = 0.0
        #: Probability that a new resource is born dead.
        self.dead_on_arrival: float = 0.0
        self.random = random.Random(seed)
        self.created: list[FakeResource] = []
        self.connect_attempts = 0
        #: The resources validated, in order.
        self.validated: list[FakeResource] = []
        self._ids = itertools.count(1)
        #: Set while a connect is in progress (tests wait on these).
        self.connecting = 0
        #: Closes that have run to their end (``close_count`` counts starts).
        self.closes_finished = 0

    def _roll(self, p: float) -> bool:
        return p >= 1.0 or (p > 0.0 and self.random.random() < p)

    async def _pause(self, delay: float, hang: float) -> None:
        if self._roll(hang):
            await anyio.sleep(math.inf)
        if delay:
            await anyio.sleep(delay)
        else:
            await anyio.lowlevel.checkpoint()

    async def connect(self) -> FakeResource:
        self.connect_attempts += 1
        self.connecting += 1
        try:
            await self._pause(self.connect_delay, self.connect_hang)
            if self._roll(self.connect_fail):
                raise FakeError("connection refused")
        finally:
            self.connecting -= 1
        resource = FakeResource(next(self._ids), dead=self._roll(self.dead_on_arrival))
        self.created.append(resource)
        return resource

    async def close(self, resource: FakeResource) -> None:
        resource.close_count += 1
        if self.close_delay:
            await anyio.sleep(self.close_delay)
        self.closes_finished += 1

    async def validate(self, resource: FakeResource) -> bool:
        self.validated.append(resource)
        await self._pause(self.validate_delay, self.validate_hang)
        if self._roll(self.validate_fail):
            raise FakeError("ping failed")
        return not resource.closed

    async def reset(self, resource: FakeResource) -> None:
        await self._pause(self.reset_delay, self.reset_hang)
        if self._roll(self.reset_fail):
            raise FakeError("reset failed")
        resource.resets += 1
        resource.session.clear()

    # -- what the tests assert ------------------------------------------------

    @property
    def validations(self) -> int:
        return len(self.validated)

    def live(self) -> list[FakeResource]:
        return [r for r in self.created if r.close_count == 0]

    def assert_all_closed_once(self) -> None:
        wrong = [(r, r.close_count) for r in self.created if r.close_count != 1]
        assert not wrong, f"resources not closed exactly once: {wrong}"


def check_invariants(pool: AsyncPool[Any]) -> None:
    """The accounting every pool must satisfy at every instant."""
    from asyncpool._state import CLEANING, IDLE, LEASED, RETURNING

    stats = pool.stats()
    assert stats.in_use >= 0, stats
    assert stats.in_use + stats.idle <= stats.size <= stats.max_size, stats
    assert stats.size == stats.idle + stats.in_use + stats.connecting + stats.cleaning, stats
    state = pool._state
    by_state = [0] * 6
    for entry in state.entries.values():
        by_state[entry.state] += 1
    assert by_state[IDLE] == stats.idle, (by_state, stats)
    # Cleaning: entries the pool works on, and closes not finished yet.
    assert by_state[CLEANING] + state.closing == stats.cleaning, (by_state, state.closing, stats)
    assert by_state[LEASED] + by_state[RETURNING] == stats.in_use, (by_state, stats)
    assert stats.waiting >= 0, stats
    assert all(entry.state == IDLE for entry in state.idle)


async def acquire_in_task(pool: AsyncPool[Any], timeout: float | None) -> Any:
    """``await pool.acquire(timeout=...)`` as a coroutine of its own, for a task.

    ``timeout=None`` takes the contended path that queues at once with the
    pool's own timeout; a number takes the general one.
    """
    return await pool.acquire(timeout=timeout)


def raised_in_thread(fn: Callable[[], object], timeout: float = 10.0) -> BaseException | None:
    """Run ``fn()`` in a new thread and wait for it; what it raised, if anything."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{fn!r} still running after {timeout} s"
    return raised[0] if raised else None
