"""The asyncio backend: futures, one deadline timer per queue, plain tasks.

Waiting is where a pool spends its time under load, so this module is built
around two measurements: ``loop.call_later`` plus ``cancel`` costs about as
much as a whole uncontended queue cycle, and a future costs a third of one.
Hence a waiter is just a future in a deque, and deadlines are enforced by a
single timer armed for the waiter at the head of the queue: with one timeout
for everybody (the usual case) deadlines grow along the queue, so the head
always expires first and the timer fires about once per timeout period, not
once per wait. A waiter whose deadline is earlier than the one ahead of it
gets a timer of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from threading import get_ident
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import PoolError
from . import Taker, WaitAgain, WaitOwner

if TYPE_CHECKING:
    from .._state import Entry

__all__ = ["AsyncioBackend", "AsyncioWaitQueue"]

T = TypeVar("T")
logger = logging.getLogger("asyncpool")

_Future = asyncio.Future

# A waiter is a three-item list, ``[future, deadline, counted]``: about half
# the cost of an object with three slots, on the path every waiting acquire
# takes. ``counted`` is true while the place counts in ``live``; whoever ends
# the wait (hand-over, deadline, close, or the waiter noticing its own
# cancellation) clears it, exactly once.
_FUT, _DEADLINE, _COUNTED = 0, 1, 2
_Waiter = list  # [asyncio.Future[Entry], float, bool]


class AsyncioWaitQueue:
    """A FIFO of futures; see the module docstring for the deadline timer."""

    __slots__ = ("_closed", "_loop", "_owner", "_queue", "_tail_deadline", "_thread", "_timer", "_timer_at", "live")

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: WaitOwner) -> None:
        self._loop = loop
        #: The thread the loop runs on (made in ``open()``, on the loop).
        self._thread = get_ident()
        self._owner = owner
        # Places that no longer count are skipped lazily, and compacted away
        # when they outnumber the live ones.
        self._queue: deque[_Waiter[Any]] = deque()
        self._tail_deadline = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._closed = False
        self.live = 0

    def __len__(self) -> int:
        return self.live

    async def wait(self, deadline: float, taker: Taker) -> Any:
        if self._closed:
            raise self._owner.closed_error()
        loop = self._loop
        if get_ident() != self._thread or not loop.is_running():
            # Before queueing: a place (and a connect started for it) on a
            # loop that may be closed would never be settled. The test
            # above is the cheap one: a thread runs one loop at a time, so
            # the pool's loop running on the thread that opened the pool is
            # the loop running here. ``get_running_loop()`` costs more
            # (on CPython before 3.12 it makes a ``getpid`` system call),
            # so it only settles the rare case: the loop moved threads.
            if asyncio.get_running_loop() is not loop:
                raise PoolError("this pool belongs to another event loop; create one pool per loop")
            self._thread = get_ident()
        fut: _Future[Entry[Any]] = loop.create_future()
        waiter = [fut, deadline, True]
        own_timer: asyncio.TimerHandle | None = None
        if deadline >= self._tail_deadline and deadline >= self._timer_at:
            # The usual case: the timer is already armed for an earlier
            # waiter, whose deadline comes first. No clock read needed.
            self._tail_deadline = deadline
        else:
            now = time.monotonic()
            if deadline <= now:
                self._owner.turned_away()
                raise self._owner.timeout_error()
            if deadline >= self._tail_deadline:
                self._tail_deadline = deadline
                # Only when the queue drained and refilled since the timer
                # was armed for a later deadline than this one.
                self._arm(deadline, now)
            else:
                own_timer = loop.call_later(deadline - now, self._expire_one, waiter)
        self._queue.append(waiter)
        self.live += 1
        self._owner.waiter_enqueued()
        while True:
            try:
                entry = await fut
            except BaseException:
                if waiter[_COUNTED]:
                    # We gave up while still queued (cancelled): our place is
                    # dead now.
                    self._uncount(waiter)
                    if not fut.done():
                        fut.cancel()
                    self._after_removal()
                elif fut.done() and not fut.cancelled() and fut.exception() is None:
                    # Handed an entry in the same loop turn as our
                    # cancellation: it is not ours to keep, so it goes on.
                    self._owner.give_back(fut.result())
                raise
            finally:
                if own_timer is not None:
                    own_timer.cancel()
            try:
                return self._owner.taken(entry, taker)
            except WaitAgain:
                pass
            # The entry died between its hand-over and now: wait again, at
            # the head of the line, where we were. Rare, so it takes a timer
            # of its own rather than a place in the deadline order.
            now = time.monotonic()
            if deadline <= now:
                raise self._owner.timeout_error() from None
            fut = loop.create_future()
            waiter = [fut, deadline, True]
            own_timer = None if deadline == math.inf else loop.call_later(deadline - now, self._expire_one, waiter)
            # The deadline scans stop at the first waiter not yet due: one
            # who comes later with an earlier deadline must get a timer of
            # its own, as any waiter out of deadline order does.
            self._tail_deadline = max(self._tail_deadline, deadline)
            self._queue.appendleft(waiter)
            self.live += 1
            self._owner.waiter_enqueued()

    def hand_over(self, entry: Entry[Any]) -> bool:
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if not waiter[_COUNTED]:
                continue
            waiter[_COUNTED] = False
            self.live -= 1
            fut = waiter[_FUT]
            if fut.cancelled():
                # Cancelled, but its task has not run yet to say so.
                continue
            if not self.live:
                self._reset()
            fut.set_result(entry)
            return True
        self._reset()
        return False

    def fail_all(self, make_exc: Callable[[], BaseException]) -> None:
        self._closed = True
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if waiter[_COUNTED]:
                self._uncount(waiter)
                if not waiter[_FUT].done():
                    waiter[_FUT].set_exception(make_exc())
        self._reset()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf

    def _uncount(self, waiter: _Waiter[Any]) -> None:
        waiter[_COUNTED] = False
        self.live -= 1

    def _reset(self) -> None:
        # Nobody waits: the remaining places are all dead, and the next
        # waiter starts a fresh, ordered run of deadlines.
        self._queue.clear()
        self._tail_deadline = -math.inf

    def _after_removal(self) -> None:
        if not self.live:
            self._reset()
        elif len(self._queue) > 2 * self.live + 64:
            self._queue = deque(waiter for waiter in self._queue if waiter[_COUNTED])

    def _expire(self, waiter: _Waiter[Any]) -> None:
        self._uncount(waiter)
        if not waiter[_FUT].cancelled():
            waiter[_FUT].set_exception(self._owner.timeout_error())

    def _expire_one(self, waiter: _Waiter[Any]) -> None:
        if waiter[_COUNTED]:
            self._expire(waiter)
            self._after_removal()

    def _arm(self, deadline: float, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(deadline - now, self._expire_due)
        self._timer_at = deadline

    def _expire_due(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        queue = self._queue
        now = time.monotonic()
        while queue:
            waiter = queue[0]
            if not waiter[_COUNTED]:
                queue.popleft()
            elif waiter[_FUT].cancelled():
                queue.popleft()
                self._uncount(waiter)
            elif waiter[_DEADLINE] <= now:
                queue.popleft()
                self._expire(waiter)
            else:
                if waiter[_DEADLINE] != math.inf:
                    self._arm(waiter[_DEADLINE], now)
                break
        if not self.live:
            self._reset()


class _TaskHandle:
    __slots__ = ("_task",)

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task

    def cancel(self) -> None:
        self._task.cancel()


class _Repeat:
    """A chain of ``call_later`` timers: cheaper than a task that sleeps,
    and nothing is left pending on the loop once it stops."""

    __slots__ = ("_fn", "_handle", "_interval", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, fn: Callable[[], bool]) -> None:
        self._loop = loop
        self._interval = interval
        self._fn = fn
        self._handle: asyncio.TimerHandle | None = loop.call_later(interval, self._run)

    def _run(self) -> None:
        self._handle = self._loop.call_later(self._interval, self._run) if self._fn() else None

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class AsyncioBackend:
    """asyncio (and uvloop, and anything else implementing its loop API)."""

    name = "asyncio"
    cancelled: type[BaseException] = asyncio.CancelledError
    #: A cancelled task sees one CancelledError; awaits after it work.
    level_triggered = False
    checkpoint = None

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        # Strong references: the loop keeps only weak ones to its tasks.
        self._tasks: set[asyncio.Task[Any]] = set()

    now = staticmethod(time.monotonic)

    def check_loop(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # no asyncio loop: trio, or no async context at all
            running = None
        if running is not self.loop:
            raise PoolError("this pool belongs to another event loop; create one pool per loop")

    def wait_queue(self, owner: WaitOwner) -> AsyncioWaitQueue:
        return AsyncioWaitQueue(self.loop, owner)

    def ready(self, value: T) -> Awaitable[T]:
        fut: asyncio.Future[T] = self.loop.create_future()
        fut.set_result(value)
        return fut

    def spawn(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, on_done: Callable[[], None] | None = None
    ) -> _TaskHandle:
        # A Task made directly, not through ``loop.create_task``: an eager
        # task factory (Python 3.12+) would run the job's first step inside
        # the synchronous ``PoolState`` change that asked for it, and a
        # connector that completes without suspending would then re-enter
        # the state half-way through that change.
        task: asyncio.Task[Any] = asyncio.Task(fn(*args), loop=self.loop)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if on_done is not None:
            task.add_done_callback(lambda _task: on_done())
        return _TaskHandle(task)

    def repeat(self, interval: float, fn: Callable[[], bool]) -> _Repeat:
        return _Repeat(self.loop, interval, fn)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    if sys.version_info >= (3, 11):

        async def call_with_timeout(self, seconds: float | None, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
            if seconds is None:
                return await fn(*args)
            async with asyncio.timeout(seconds):
                return await fn(*args)

    else:  # pragma: no cover - Python 3.10

        async def call_with_timeout(self, seconds: float | None, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
            if seconds is None:
                return await fn(*args)
            try:
                return await asyncio.wait_for(fn(*args), seconds)
            except asyncio.TimeoutError:
                # Not yet the built-in TimeoutError on 3.10.
                raise TimeoutError(f"timed out after {seconds} s") from None

    async def call_shielded(self, seconds: float, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        # Edge-triggered: a clean-up await after a CancelledError is not
        # interrupted again unless the task is cancelled anew.
        return await self.call_with_timeout(seconds, fn, *args)

    def event(self) -> asyncio.Event:
        return asyncio.Event()
