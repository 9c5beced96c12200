"""The trio backend: parked tasks, cancel scopes, system tasks.

A waiter is a parked task (``wait_task_rescheduled``), woken by
``reschedule`` with its entry. Trio makes the hand-over atomic: once a task
is rescheduled its abort function is never called, so "handed an entry, then
cancelled" cannot happen here, unlike on asyncio. Deadlines are cancel
scopes on trio's own clock, so a test's ``MockClock`` drives the pool too.

Background work runs in system tasks, each in its own cancel scope so the
pool can cancel it, since ``open()`` has no nursery to run them in.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import outcome
import trio

from .._errors import PoolError
from . import Taker, WaitAgain, WaitOwner

if TYPE_CHECKING:
    from .._state import Entry

__all__ = ["TrioBackend", "TrioWaitQueue"]

T = TypeVar("T")
logger = logging.getLogger("asyncpool")

_WAITING, _HANDED, _GONE = 0, 1, 2


class _Waiter:
    __slots__ = ("deadline", "state", "task")

    def __init__(self, task: trio.lowlevel.Task, deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.state = _WAITING


class TrioWaitQueue:
    """A FIFO of parked trio tasks.

    As on asyncio, deadlines are enforced by one timer for the whole queue
    rather than a cancel scope per wait (which costs more than the wait): a
    system task sleeps in a cancel scope whose deadline is the head waiter's,
    and wakes expired waiters with ``PoolTimeout``. A waiter whose deadline is
    earlier than the one ahead of it uses a cancel scope of its own.
    """

    __slots__ = ("_now", "_owner", "_queue", "_reaper", "_stopped", "_tail_deadline", "_token", "live")

    def __init__(self, owner: WaitOwner, token: trio.lowlevel.TrioToken, now: Callable[[], float]) -> None:
        self._owner = owner
        self._token = token
        self._now = now
        self._queue: deque[_Waiter] = deque()
        self._tail_deadline = -math.inf
        #: The reaper's sleeping scope; its deadline is the next expiry.
        self._reaper: trio.CancelScope | None = None
        self._stopped = False
        self.live = 0

    def __len__(self) -> int:
        return self.live

    async def wait(self, deadline: float, taker: Taker) -> Any:
        if trio.lowlevel.current_trio_token() is not self._token:
            raise PoolError("this pool belongs to another trio run; create one pool per run")
        if self._stopped:
            raise self._owner.closed_error()
        if deadline <= self._now():
            self._owner.turned_away()
            raise self._owner.timeout_error()
        waiter = _Waiter(trio.lowlevel.current_task(), deadline)
        in_order = deadline >= self._tail_deadline
        if in_order:
            self._tail_deadline = deadline
            self._arm(deadline)
        self._queue.append(waiter)
        self.live += 1
        self._owner.waiter_enqueued()

        def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
            # Cancelled (or our own deadline) while still parked: give up our place.
            waiter.state = _GONE
            self.live -= 1
            self._after_removal()
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            if in_order:
                entry = cast("Entry[Any]", await trio.lowlevel.wait_task_rescheduled(abort))
            else:
                handed: Entry[Any] | None = None
                with trio.CancelScope(deadline=deadline):
                    handed = cast("Entry[Any]", await trio.lowlevel.wait_task_rescheduled(abort))
                if handed is None:
                    raise self._owner.timeout_error()
                entry = handed
            try:
                return self._owner.taken(entry, taker)
            except WaitAgain:
                pass
            # The entry died between its hand-over and now: wait again, at
            # the head of the line, where we were, under a scope of our own.
            if deadline <= self._now():
                raise self._owner.timeout_error() from None
            waiter = _Waiter(trio.lowlevel.current_task(), deadline)
            in_order = False
            # The reaper stops at the first waiter not yet due: one who comes
            # later with an earlier deadline must use a scope of its own, as
            # any waiter out of deadline order does.
            self._tail_deadline = max(self._tail_deadline, deadline)
            self._queue.appendleft(waiter)
            self.live += 1
            self._owner.waiter_enqueued()

    def hand_over(self, entry: Entry[Any]) -> bool:
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if waiter.state == _WAITING:
                waiter.state = _HANDED
                self.live -= 1
                if not self.live:
                    self._tail_deadline = -math.inf
                trio.lowlevel.reschedule(waiter.task, outcome.Value(entry))
                return True
        self._tail_deadline = -math.inf
        return False

    def fail_all(self, make_exc: Callable[[], BaseException]) -> None:
        queue, self._queue = self._queue, deque()
        for waiter in queue:
            if waiter.state == _WAITING:
                waiter.state = _HANDED
                trio.lowlevel.reschedule(waiter.task, outcome.Error(make_exc()))
        self.live = 0
        self._stopped = True
        if self._reaper is not None:
            self._reaper.cancel()

    def _after_removal(self) -> None:
        if not self.live:
            self._tail_deadline = -math.inf
        if len(self._queue) > 2 * self.live + 64:
            self._queue = deque(w for w in self._queue if w.state == _WAITING)

    def _arm(self, deadline: float) -> None:
        if deadline == math.inf or self._stopped:
            return
        if self._reaper is None:
            self._reaper = trio.CancelScope(deadline=deadline)
            trio.lowlevel.spawn_system_task(self._reap, self._reaper, name="asyncpool wait-queue deadlines")
        elif deadline < self._reaper.deadline:
            self._reaper.deadline = deadline

    async def _reap(self, scope: trio.CancelScope) -> None:
        while not self._stopped:
            with scope:
                await trio.sleep_forever()
            if self._stopped or (scope.cancel_called and scope.deadline > trio.current_time()):
                return
            now = trio.current_time()
            queue = self._queue
            next_deadline = math.inf
            while queue:
                waiter = queue[0]
                if waiter.state != _WAITING:
                    queue.popleft()
                elif waiter.deadline <= now:
                    queue.popleft()
                    waiter.state = _HANDED
                    self.live -= 1
                    trio.lowlevel.reschedule(waiter.task, outcome.Error(self._owner.timeout_error()))
                else:
                    next_deadline = waiter.deadline
                    break
            if not self.live:
                self._tail_deadline = -math.inf
            # A scope that has fired cannot sleep again: take a fresh one.
            scope = self._reaper = trio.CancelScope(deadline=next_deadline)


class _TaskHandle:
    __slots__ = ("scope",)

    def __init__(self) -> None:
        self.scope = trio.CancelScope()

    def cancel(self) -> None:
        self.scope.cancel()


class _Event:
    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


class TrioBackend:
    """trio, with its clock, its cancel scopes and its system tasks."""

    name = "trio"
    cancelled: type[BaseException] = trio.Cancelled
    #: Cancellation is level-triggered: clean-up I/O must be shielded.
    level_triggered = True
    checkpoint = staticmethod(trio.lowlevel.checkpoint)

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        #: The run's clock, bound once: the pool reads it twice per lease,
        #: and ``trio.current_time()`` finds the clock anew on each call
        #: (twice the cost). A run keeps its clock, and a pool its run.
        self.now: Callable[[], float] = trio.lowlevel.current_clock().current_time

    def check_loop(self) -> None:
        try:
            running = trio.lowlevel.current_trio_token()
        except RuntimeError:  # not inside trio at all
            running = None
        if running is not self._token:
            raise PoolError("this pool belongs to another trio run; create one pool per run")

    def wait_queue(self, owner: WaitOwner) -> TrioWaitQueue:
        return TrioWaitQueue(owner, self._token, self.now)

    def ready(self, value: object) -> None:
        return None  # every acquire is a checkpoint: no done-awaitable

    def spawn(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, on_done: Callable[[], None] | None = None
    ) -> _TaskHandle:
        handle = _TaskHandle()

        async def run() -> None:
            try:
                with handle.scope:
                    await fn(*args)
            except Exception:
                # An exception escaping a system task would crash the run.
                logger.exception("asyncpool background task failed")
            finally:
                if on_done is not None:
                    on_done()

        trio.lowlevel.spawn_system_task(run)
        return handle

    def repeat(self, interval: float, fn: Callable[[], bool]) -> _TaskHandle:
        async def run() -> None:
            while True:
                await trio.sleep(interval)
                if not fn():
                    return

        return self.spawn(run)

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    async def call_with_timeout(self, seconds: float | None, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if seconds is None:
            return await fn(*args)
        try:
            with trio.fail_after(max(seconds, 0.0)):  # as asyncio: negative = already due
                return await fn(*args)
        except trio.TooSlowError:
            raise TimeoutError(f"timed out after {seconds} s") from None

    async def call_shielded(self, seconds: float, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if trio.current_effective_deadline() != -math.inf:
            # Not cancelled now: no shield needed (a cancellation arriving
            # mid-call is handled by the caller, as on asyncio).
            return await self.call_with_timeout(seconds, fn, *args)
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + seconds
            return await fn(*args)
        raise TimeoutError(f"clean-up timed out after {seconds} s")

    def event(self) -> _Event:
        return _Event()
