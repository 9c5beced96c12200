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
from typing import TYPE_CHECKING, Any, TypeVar

import outcome
import trio

from .._errors import PoolError
from . import WaitOwner

if TYPE_CHECKING:
    from .._state import Entry

__all__ = ["TrioBackend", "TrioWaitQueue"]

T = TypeVar("T")
logger = logging.getLogger("asyncpool")

_WAITING, _HANDED, _GONE = 0, 1, 2


class _Waiter:
    __slots__ = ("state", "task")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.state = _WAITING


class TrioWaitQueue:
    """A FIFO of parked trio tasks."""

    __slots__ = ("_owner", "_queue", "_token", "live")

    def __init__(self, owner: WaitOwner, token: trio.lowlevel.TrioToken) -> None:
        self._owner = owner
        self._token = token
        self._queue: deque[_Waiter] = deque()
        self.live = 0

    def __len__(self) -> int:
        return self.live

    async def wait(self, deadline: float) -> Entry[Any]:
        if trio.lowlevel.current_trio_token() is not self._token:
            raise PoolError("this pool belongs to another trio run; create one pool per run")
        if deadline <= trio.current_time():
            raise self._owner.timeout_error()
        waiter = _Waiter(trio.lowlevel.current_task())
        self._queue.append(waiter)
        self.live += 1
        self._owner.waiter_enqueued()

        def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
            # Cancelled (or our deadline) while still parked: give up our place.
            waiter.state = _GONE
            self.live -= 1
            self._after_removal()
            return trio.lowlevel.Abort.SUCCEEDED

        with trio.CancelScope(deadline=deadline):
            entry: Entry[Any] = await trio.lowlevel.wait_task_rescheduled(abort)
            return entry
        raise self._owner.timeout_error()

    def hand_over(self, entry: Entry[Any]) -> bool:
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if waiter.state == _WAITING:
                waiter.state = _HANDED
                self.live -= 1
                trio.lowlevel.reschedule(waiter.task, outcome.Value(entry))
                return True
        return False

    def fail_all(self, make_exc: Callable[[], BaseException]) -> None:
        queue, self._queue = self._queue, deque()
        for waiter in queue:
            if waiter.state == _WAITING:
                waiter.state = _HANDED
                trio.lowlevel.reschedule(waiter.task, outcome.Error(make_exc()))
        self.live = 0

    def _after_removal(self) -> None:
        if len(self._queue) > 2 * self.live + 64:
            self._queue = deque(w for w in self._queue if w.state == _WAITING)


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

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()

    now = staticmethod(trio.current_time)

    def check_loop(self) -> None:
        if trio.lowlevel.current_trio_token() is not self._token:
            raise PoolError("this pool belongs to another trio run; create one pool per run")

    def wait_queue(self, owner: WaitOwner) -> TrioWaitQueue:
        return TrioWaitQueue(owner, self._token)

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

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    async def call_with_timeout(self, seconds: float | None, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if seconds is None:
            return await fn(*args)
        try:
            with trio.fail_after(seconds):
                return await fn(*args)
        except trio.TooSlowError:
            raise TimeoutError(f"timed out after {seconds} s") from None

    async def call_shielded(self, seconds: float, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if trio.current_effective_deadline() != -math.inf:
            # Not cancelled now: no shield needed (a cancellation arriving
            # mid-call is handled by the caller, as on asyncio), and a cancel
            # scope per release would cost more than the release itself.
            return await fn(*args)
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + seconds
            return await fn(*args)
        raise TimeoutError(f"clean-up timed out after {seconds} s")

    def event(self) -> _Event:
        return _Event()
