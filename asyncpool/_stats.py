"""The immutable statistics snapshot returned by ``AsyncPool.stats()``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PoolStats"]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A consistent snapshot of one pool, taken without awaiting.

    Gauges describe this instant; counters accumulate since ``open()``.
    At every instant ``in_use + idle <= size <= max_size``: ``size`` also
    counts resources being created or health-checked.
    """

    #: Resources that exist: idle + in use + being created or checked.
    size: int
    #: Resources ready to be lent.
    idle: int
    #: Resources lent out, or being validated or reset on their way in or out.
    in_use: int
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
