"""The few primitives that differ between event-loop libraries.

The pool never asks which library it runs on: at ``open()`` it picks a
backend here and from then on only talks to that object. A backend provides
a FIFO :class:`WaitQueue` with per-waiter deadlines, background tasks, a
repeating timer, sleep, a clock, an event and a timeout wrapper.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from .._state import Entry

__all__ = ["Backend", "Event", "Taker", "TaskHandle", "WaitAgain", "WaitOwner", "WaitQueue", "current_backend"]

T = TypeVar("T")


class WaitAgain(Exception):
    """Raised by ``WaitOwner.taken``: the entry handed over died before its
    waiter ran, so the waiter waits again, first in line."""


class WaitOwner(Protocol):
    """What a wait queue needs from the pool: sync callbacks, no awaits."""

    def waiter_enqueued(self) -> None:
        """A waiter was added: maybe start a connect for it."""

    def turned_away(self) -> None:
        """A wait was refused before it queued (no time left): maybe start a
        connect anyway, for the next acquire."""

    def timeout_error(self) -> BaseException:
        """Count a timed-out waiter and build the exception it will raise."""

    def closed_error(self) -> BaseException:
        """The exception for a wait on a closed pool."""

    def give_back(self, entry: Entry[Any]) -> None:
        """A waiter was handed ``entry`` but gave up before taking it."""

    def taken(self, entry: Entry[Any], taker: Taker) -> Any:
        """A waiter runs with the ``entry`` it was handed: bind it to
        ``taker`` and return its resource; raise ``PoolClosed`` if ``close()``
        destroyed it meanwhile, or ``WaitAgain`` if it died meanwhile."""


class Taker(Protocol):
    """Who waits in a queue (a ``Lease``): it is bound to the entry it gets."""

    _entry: Entry[Any]


class WaitQueue(Protocol):
    """Tasks waiting for an entry, served strictly first in, first out."""

    #: How many tasks wait now (and have not been handed an entry yet).
    live: int

    async def wait(self, deadline: float, taker: Taker) -> Any:
        """Wait until handed an entry, then return ``owner.taken(entry,
        taker)``: the entry bound to ``taker`` and its resource.

        ``deadline`` is on ``Backend.now``'s clock, ``math.inf`` for no
        deadline. Raises the owner's timeout error at the deadline. If the
        caller is cancelled after it was handed an entry, the entry goes back
        through ``owner.give_back``; if ``taken`` says ``WaitAgain``, the
        caller waits again at the head of the queue, with the same deadline. Doing the binding here, in the waiter's
        own coroutine, saves a coroutine layer on every contended acquire.
        """
        ...

    def hand_over(self, entry: Entry[Any]) -> bool:
        """Give ``entry``, already lent, to the longest waiting task;
        ``False`` if none."""
        ...

    def fail_all(self, make_exc: Callable[[], BaseException]) -> None:
        """Wake every waiter with an exception (pool closing)."""
        ...


class TaskHandle(Protocol):
    def cancel(self) -> None: ...


class Event(Protocol):
    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> object: ...


class Backend(Protocol):
    """The event-loop library the pool was opened under."""

    name: str
    #: The exception class a cancelled task sees.
    cancelled: type[BaseException]
    #: Whether a cancelled task is cancelled again at every await (trio),
    #: so that clean-up I/O in the caller's task must be shielded.
    level_triggered: bool

    @property
    def checkpoint(self) -> Callable[[], Awaitable[None]] | None:
        """Awaited by an ``acquire()`` that found a resource without waiting,
        if the library wants every such call to be a checkpoint (trio: a
        cancellation point and a chance for other tasks to run); ``None`` on
        asyncio, whose own ``Queue.get`` does not yield when an item is ready."""
        ...

    def now(self) -> float: ...

    def check_loop(self) -> None:
        """Raise ``PoolError`` if called from another loop than the pool's."""

    def wait_queue(self, owner: WaitOwner) -> WaitQueue: ...

    def ready(self, value: T) -> Awaitable[T] | None:
        """An awaitable that gives ``value`` at once without suspending (on
        asyncio a done future), made once per resource so that lending an
        idle resource costs no coroutine; ``None`` if every acquire must be
        a checkpoint (trio)."""

    def spawn(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, on_done: Callable[[], None] | None = None
    ) -> TaskHandle:
        """Run ``fn(*args)`` in the background; it must handle its own errors.

        ``on_done`` runs synchronously once the task has finished in any way,
        even when it was cancelled before its first step (asyncio then never
        runs the coroutine at all, so its own ``finally`` would not run).
        """
        ...

    def repeat(self, interval: float, fn: Callable[[], bool]) -> TaskHandle:
        """Call ``fn()`` every ``interval`` seconds, from the loop, until it
        returns ``False`` or the handle is cancelled (``PoolState.tick``)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def call_with_timeout(self, seconds: float | None, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)``, raising ``TimeoutError`` after ``seconds``."""
        ...

    async def call_shielded(self, seconds: float, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` protected from the caller's cancellation where
        cancellation is level-triggered, bounded by ``seconds``."""
        ...

    def event(self) -> Event: ...


def current_backend() -> Backend:
    """The backend for the event-loop library running the current task."""
    library = "asyncio"
    if "sniffio" in sys.modules or _sniffio_importable():
        import sniffio

        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            raise RuntimeError("asyncpool must be used from inside a running event loop") from None
    if library == "trio":
        from ._trio import TrioBackend

        return TrioBackend()
    if library != "asyncio":
        raise RuntimeError(f"asyncpool does not support the {library!r} event loop")
    from ._asyncio import AsyncioBackend

    return AsyncioBackend()


def _sniffio_importable() -> bool:
    try:
        import sniffio  # noqa: F401
    except ImportError:
        return False
    return True
