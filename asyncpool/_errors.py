"""The exceptions asyncpool raises.

Every error the pool itself raises derives from :class:`PoolError`, so a caller
can tell "the pool said no" apart from errors raised by its own code or by the
resource, which always pass through unchanged.
"""

from __future__ import annotations

import asyncio

__all__ = ["PoolBusy", "PoolClosed", "PoolError", "PoolTimeout"]


class PoolError(Exception):
    """Base class of every error raised by the pool itself."""


#: Before Python 3.11 ``asyncio.TimeoutError`` is not the built-in
#: ``TimeoutError``; a ``PoolTimeout`` is both, so ``except
#: asyncio.TimeoutError`` (what ``asyncio.wait_for`` and asyncpg's pool raise)
#: catches it there too.
_TIMEOUT_ERRORS: tuple[type[Exception], ...] = (
    (TimeoutError,) if asyncio.TimeoutError is TimeoutError else (TimeoutError, asyncio.TimeoutError)
)


class PoolTimeout(PoolError, *_TIMEOUT_ERRORS):  # type: ignore[misc]
    """Raised when a wait for a resource outlives its deadline; a
    ``TimeoutError`` and an ``asyncio.TimeoutError`` on every Python.

    When the pool was trying to connect during the wait and every attempt
    failed, the last connect error is attached as ``__cause__``, so a
    ``PoolTimeout`` during an outage says *why* no resource came.
    """


class PoolBusy(PoolError):
    """Raised at once when ``max_waiting`` tasks are already waiting.

    Turning a request away immediately is the point: under overload a fast
    "no" lets the caller shed load instead of piling up more waiters.
    """


class PoolClosed(PoolError):
    """Raised when the pool is closed, or closes while the caller waits."""
