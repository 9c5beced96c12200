"""What ``AsyncPool.acquire()`` returns: awaitable and async context manager."""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

from ._state import HANDED, IDLE, LEASED, RETURNING

if TYPE_CHECKING:
    from ._pool import AsyncPool
    from ._state import Entry

__all__ = ["Lease"]

R = TypeVar("R")


@final
class Lease(Generic[R]):
    """One borrowing of one resource.

    ``await pool.acquire()`` returns the resource and leaves releasing it to
    the caller; ``async with pool.acquire() as resource`` releases it on the
    way out, whatever way that is. If the block is left by a cancellation,
    the clean-up (reset, validation) is finished in the background, so the
    cancelled task is not held up and the resource is still not lost.

    ``__aenter__`` lends an idle resource when it is called, not when its
    awaitable is awaited (that is what keeps it cheap), so call it only as
    ``async with`` and ``await`` do: awaiting the result at once.
    """

    __slots__ = ("_entry", "_pool", "_timeout")
    # No ``__init__``: ``AsyncPool.acquire()`` calls ``Lease()`` and sets the
    # two slots itself, which skips a Python frame on the hottest call of
    # the pool. ``_entry`` is set when the lease is entered.
    _pool: AsyncPool[R]
    _timeout: float | None
    _entry: Entry[R]

    def __await__(self) -> Generator[Any, None, R]:
        return self.__aenter__().__await__()

    def __aenter__(self) -> Awaitable[R]:
        # Not a coroutine function, so that the two common cases cost no
        # coroutine of their own:
        #
        # - uncontended: ``PoolState.checkout`` unrolled for the case that
        #   needs no decision. Nobody is queued ahead, the warmest idle entry
        #   is neither expired nor due for validation (``Entry.lend_by``) and
        #   the connector's local ``is_closed`` check, if any, passes. The
        #   awaitable returned is the entry's ``ready`` (on asyncio a done
        #   future holding the resource), which does not suspend.
        # - contended: queue up at once; the wait queue binds the entry it is
        #   handed (lent already, see ``PoolState._hand_over``) to this lease.
        #
        # Anything else (not open yet, closed, validation due, backpressure,
        # a bad timeout) goes through ``_enter`` and the slow path.
        pool = self._pool
        state = pool._state
        idle = state.idle
        waiters = state.waiters
        # ``now`` is a clock stored in a slot: loading it, then calling it,
        # is cheaper than ``state.now()``, which CPython cannot specialise.
        # The precise clock: whether to validate is decided here.
        now = state.now
        if idle and not waiters.live:
            entry = idle[-1]
            if now() < entry.lend_by and (state.is_closed is None or not state.drop_if_closed(entry)):
                idle.pop()
                entry.state = LEASED
                entry.owner = self
                state.acquired += 1
                self._entry = entry
                ready = entry.ready
                if ready is not None:
                    return ready
                # No done-future for this library (trio): the acquire is a
                # checkpoint, as the library's conventions ask.
                return pool._checkpoint_lent(entry, self)
        elif pool._opened and not state.closed and waiters.live < pool._max_waiting:
            timeout = self._timeout
            if timeout is None:
                return waiters.wait(now() + pool._wait_limit, self)
            if timeout >= 0:
                return waiters.wait(now() + timeout, self)
        return self._enter()

    async def _enter(self) -> R:
        pool = self._pool
        state = pool._state
        entry = state.checkout() if state.idle and not state.waiters.live else None
        if entry is not None and entry.state == LEASED:
            if pool._checkpoint is not None:
                self._entry = entry
                entry.owner = self
                return await pool._checkpoint_lent(entry, self)
        else:
            entry = await pool._acquire_until(pool._deadline(self._timeout, entry), entry, self)
        self._entry = entry
        entry.owner = self
        return entry.resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = self._entry
        if entry.owner is not self:
            return  # released explicitly inside the block, maybe lent again since
        pool = self._pool
        if exc is not None or entry.state != LEASED or not pool._inline_release:
            await pool._release_entry(entry, exc)
            return
        # The common path, inlined: reset, then hand on or keep idle.
        entry.state = RETURNING
        reset = pool._reset
        if reset is not None:
            try:
                await reset(entry.resource)
            except BaseException as reset_exc:
                pool._reset_failed(entry, reset_exc)
                if isinstance(reset_exc, Exception):
                    return
                raise
        state = pool._state
        if state.closed or entry.state != RETURNING:
            state.checkin(entry)
            return
        # ``PoolState.checkin`` unrolled for the cases with nothing to decide:
        # the pool is open and the entry has not expired, so it goes straight
        # to the longest waiter, lent (see ``PoolState._hand_over``), or idle.
        # Stamped with the coarse clock (see ``PoolState.coarse``), which is
        # never ahead of the clock: the entry can only look idle for longer
        # than it is. ``math.inf`` while the ticks are off sends this to
        # ``checkin`` and the precise clock.
        now = state.coarse
        if now >= entry.expires_at:
            state.checkin(entry)
            return
        entry.last_ok = now
        waiters = state.waiters
        if waiters.live:
            entry.state = LEASED
            entry.owner = HANDED
            if waiters.hand_over(entry):
                state.acquired += 1
                return
        lend_by = now + entry.window
        if lend_by > entry.expires_at:
            lend_by = entry.expires_at
        entry.idle_since = now
        entry.lend_by = lend_by
        entry.state = IDLE
        state.idle.append(entry)
