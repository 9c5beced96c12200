"""The immutable statistics snapshot returned by ``AsyncPool.stats()``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PoolStats"]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A consistent snapshot of one pool, taken without awaiting.

    Gauges describe this instant; counters accumulate since ``open()``.
    At every instant ``size == idle + in_use + connecting + cleaning`` and
    ``in_use + idle <= size <= max_size``.
    """

    #: Resources that exist: idle + in use + connecting + cleaning.
    size: int
    #: Resources ready to be lent.
    idle: int
    #: Resources held by callers: lent, or being released by the caller
    #: itself (``release()`` resetting in the caller's task). 0 the moment
    #: no caller holds one.
    in_use: int
    #: Resources being created.
    connecting: int
    #: Resources the pool itself is working on, held by no caller: being
    #: validated (before a lend, or by the health check), reset in the
    #: background (after a cancelled block, or to spare the caller the round
    #: trip), or closed (until the close has finished).
    cleaning: int
    #: Tasks currently waiting in ``acquire()``.
    waiting: int
    min_size: int
    max_size: int
    #: Successful ``acquire()`` calls.
    acquired: int
    #: ``acquire()`` calls that raised ``PoolTimeout``.
    timeouts: int
    #: ``acquire()`` calls turned away with ``PoolBusy``.
    rejected: int
    #: Resources created by the connector.
    created: int
    #: Resources handed to the connector's ``close()``.
    destroyed: int
    #: Failed ``connect()`` attempts.
    connect_errors: int
    #: Resources found dead by validation or by the health check.
    health_failures: int
