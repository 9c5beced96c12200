"""What ``AsyncPool.acquire()`` returns: awaitable and async context manager."""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

from ._state import IDLE, LEASED, RETURNING

if TYPE_CHECKING:
    from ._pool import AsyncPool

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
    """

    __slots__ = ("_entry", "_pool", "_serial", "_timeout")

    def __init__(self, pool: AsyncPool[R], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        # ``_entry`` and ``_serial`` are set by ``__aenter__``; leaving them
        # unset here keeps ``acquire()`` cheap.

    def __await__(self) -> Generator[Any, None, R]:
        return self._pool._acquire_resource(self._timeout).__await__()

    async def __aenter__(self) -> R:
        pool = self._pool
        state = pool._state
        idle = state.idle
        # The uncontended path, ``PoolState.checkout`` unrolled for the case
        # that needs no decision: nobody queued ahead, and the warmest idle
        # entry is neither expired nor due for validation. Anything else goes
        # through ``checkout`` and the slow path.
        if idle and not state.waiters.live:
            entry = idle[-1]
            now = state.now()
            if now - entry.last_ok <= state.validate_window and now < entry.expires_at and state.lend_unchecked:
                idle.pop()
                entry.state = LEASED
                entry.serial += 1
                state.acquired += 1
                if pool._checkpoint is not None:
                    await pool._checkpoint_lent(entry)
            else:
                taken = state.checkout()
                if taken is None or taken.state != LEASED:
                    taken = await pool._acquire_entry(self._timeout, taken)
                elif pool._checkpoint is not None:
                    await pool._checkpoint_lent(taken)
                entry = taken
        else:
            entry = await pool._acquire_entry(self._timeout, None)
        self._entry = entry
        self._serial = entry.serial
        return entry.resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = self._entry
        if entry.serial != self._serial:
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
        if state.waiters.live or state.closed or entry.state != RETURNING:
            state.checkin(entry)
            return
        # ``PoolState.checkin`` unrolled for the case with nothing to decide:
        # nobody waits, the pool is open, the entry has not expired.
        now = state.now()
        if now >= entry.expires_at:
            state.checkin(entry)
            return
        entry.last_ok = entry.idle_since = now
        entry.state = IDLE
        state.idle.append(entry)
