"""How the pool makes, checks, cleans and destroys one resource.

A :class:`Connector` is the whole interface between the pool and the thing it
pools. Anything else the pool does (waiting, fairness, lifetimes) is generic.
A plain zero-argument async factory is accepted too and wrapped in
:class:`FactoryConnector`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

__all__ = ["Capabilities", "Connector", "ConnectorExtras", "FactoryConnector", "as_connector", "capabilities"]

R = TypeVar("R")
R_contra = TypeVar("R_contra", contravariant=True)


@runtime_checkable
class Connector(Protocol[R]):
    """Make, check, clean and destroy one kind of resource.

    Every method may take as long as its I/O needs; the pool bounds the ones
    it runs in the background (validation, closing, cleanup after a
    cancellation) with its own timeouts, and never runs two methods on one
    resource at the same time.

    A connector may also have any of the members of
    :class:`ConnectorExtras`; the pool finds them once, when it is built
    (:func:`capabilities`).
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


class ConnectorExtras(Protocol[R_contra]):
    """What a :class:`Connector` may also offer; each member is optional.

    Not a protocol to check against: the pool looks for each member on its
    own (:func:`capabilities`), so a connector defines only what it has.
    """

    #: Reset costs a round trip: run it off the releasing caller's path
    #: (``AsyncPool(background_reset=None)`` follows this; default ``False``).
    background_reset: bool
    #: ``reset`` does nothing: the pool does not even await it (default ``False``).
    reset_is_noop: bool

    def is_closed(self, resource: R_contra) -> bool:
        """Known dead from local state alone, with no I/O. Called every time
        a resource is about to be lent, so one known dead is never lent."""
        ...

    def idle_limit(self, resource: R_contra) -> float | None:
        """How long ``resource`` may stay idle before it is retired instead
        of lent (``None``: no limit); asked once, when it joins the pool."""
        ...

    def watch(self, resource: R_contra, dead: Callable[[], None]) -> None:
        """Call ``dead()`` the moment ``resource`` dies, so the pool retires it
        at once rather than when it next would lend it."""
        ...


@dataclass(frozen=True, slots=True)
class Capabilities(Generic[R]):
    """The :class:`ConnectorExtras` a connector has (``None``: it has not)."""

    is_closed: Callable[[R], bool] | None
    idle_limit: Callable[[R], float | None] | None
    watch: Callable[[R, Callable[[], None]], None] | None
    background_reset: bool
    reset_is_noop: bool


def capabilities(connector: Connector[R]) -> Capabilities[R]:
    """The one place the pool looks for a connector's optional members."""
    return Capabilities(
        getattr(connector, "is_closed", None),
        getattr(connector, "idle_limit", None),
        getattr(connector, "watch", None),
        bool(getattr(connector, "background_reset", False)),
        bool(getattr(connector, "reset_is_noop", False)),
    )


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
