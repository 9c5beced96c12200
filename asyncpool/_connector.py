"""How the pool makes, checks, cleans and destroys one resource.

A :class:`Connector` is the whole interface between the pool and the thing it
pools. Anything else the pool does (waiting, fairness, lifetimes) is generic.
A plain zero-argument async factory is accepted too and wrapped in
:class:`FactoryConnector`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["Connector", "FactoryConnector", "as_connector"]

R = TypeVar("R")


@runtime_checkable
class Connector(Protocol[R]):
    """Make, check, clean and destroy one kind of resource.

    Every method may take as long as its I/O needs; the pool bounds the ones
    it runs in the background (validation, closing, cleanup after a
    cancellation) with its own timeouts, and never runs two methods on one
    resource at the same time.

    A connector may also define a synchronous ``is_closed(resource) -> bool``
    that answers from local state alone. The pool then calls it every time it
    is about to lend a resource, so one it already knows is dead is never
    lent, at no I/O cost.
    """

    async def connect(self) -> R:
        """Open one new resource: the expensive part."""
        ...

    async def close(self, resource: R) -> None:
        """Destroy ``resource`` for good."""
        ...

    async def validate(self, resource: R) -> bool:
        """Is ``resource`` still usable? ``False`` or an exception means dead."""
        ...

    async def reset(self, resource: R) -> None:
        """Make ``resource`` clean for the next borrower; raising discards it."""
        ...


class FactoryConnector(Connector[R]):
    """A connector built from a zero-argument async factory.

    Validation answers "is it not closed?" from the resource's ``closed``
    attribute or ``is_closed()`` method when it has one; reset does nothing;
    close calls the resource's ``aclose()`` or ``close()`` if it has one.
    """

    __slots__ = ("_factory",)

    #: The pool skips awaiting ``reset`` entirely for this connector.
    reset_is_noop = True

    def __init__(self, factory: Callable[[], Awaitable[R]]) -> None:
        self._factory = factory

    def __repr__(self) -> str:
        name = getattr(self._factory, "__qualname__", None) or repr(self._factory)
        return f"<FactoryConnector {name}>"

    async def connect(self) -> R:
        return await self._factory()

    def is_closed(self, resource: R) -> bool:
        closed: Any = getattr(resource, "closed", None)
        if closed is None:
            closed = getattr(resource, "is_closed", None)
        if callable(closed):
            closed = closed()
        return closed is True

    async def validate(self, resource: R) -> bool:
        return not self.is_closed(resource)

    async def reset(self, resource: R) -> None:
        return None

    async def close(self, resource: R) -> None:
        closer: Any = getattr(resource, "aclose", None) or getattr(resource, "close", None)
        if closer is None:
            return
        result = closer()
        if inspect.isawaitable(result):
            await result


def as_connector(obj: Connector[R] | Callable[[], Awaitable[R]]) -> Connector[R]:
    """Accept a :class:`Connector` as is, or wrap a plain async factory."""
    if all(callable(getattr(obj, name, None)) for name in ("connect", "close", "validate", "reset")):
        return obj  # type: ignore[return-value]
    if callable(obj):
        return FactoryConnector(obj)
    raise TypeError(
        f"expected a Connector (connect/close/validate/reset) or a zero-argument "
        f"async factory, got {type(obj).__name__}"
    )
