"""``create_pool``: ``asyncpg.create_pool``'s arguments, asyncpool's pool."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncpg

from ._connector import AsyncpgConnector
from ._facade import Pool
from ._sql import RESET_TIMEOUT

if TYPE_CHECKING:
    from ._types import Connection, ConnHook


def overrides_reset(connection_class: type[Connection]) -> bool:
    base: Any = asyncpg.Connection
    cls: Any = connection_class
    return bool(cls.reset is not base.reset or cls.get_reset_query is not base.get_reset_query)


async def reset_by_connection_class(conn: Connection) -> None:
    """The reset of a ``connection_class`` that overrides ``reset()`` or
    ``get_reset_query()``, as asyncpg's pool runs it (after the connector's
    rollback, which leaves ``Connection.reset()`` no transaction to end)."""
    await conn.reset(timeout=RESET_TIMEOUT)


def _check_sizes(init_size: int | None, min_size: int, max_size: int) -> None:
    """The size checks of ``asyncpg.create_pool``, with its messages (code
    and tests that match on them keep working); ``AsyncPool`` checks the
    rest (types, and what asyncpg does not check)."""
    for option, value in (("init_size", init_size), ("min_size", min_size), ("max_size", max_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{option} must be an int, got {value!r}")
    if max_size <= 0:
        raise ValueError("max_size is expected to be greater than zero")
    if min_size < 0:
        raise ValueError("min_size is expected to be greater or equal to zero")
    if min_size > max_size:
        raise ValueError("min_size is greater than max_size")
    if init_size is not None:
        if init_size < 0:
            raise ValueError("init_size is expected to be greater or equal to zero")
        if init_size > max_size:
            raise ValueError("init_size is greater than max_size")
        if init_size < min_size:
            raise ValueError("init_size is smaller than min_size")


def create_pool(
    dsn: str | None = None,
    *,
    init_size: int | None = None,
    min_size: int = 10,
    max_size: int = 10,
    max_queries: int = 50000,
    max_inactive_connection_lifetime: float = 300.0,
    connect: Callable[..., Awaitable[Connection]] | None = None,
    setup: ConnHook | None = None,
    init: ConnHook | None = None,
    reset: str | ConnHook | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    connection_class: type[Connection] | None = None,
    record_class: type[Any] | None = None,
    pgbouncer: bool = False,
    acquire_timeout: float | None = 30.0,
    max_lifetime: float | None = 3600.0,
    max_waiting: int | None = None,
    health_check_interval: float | None = 30.0,
    name: str | None = None,
    **connect_kwargs: Any,
) -> Pool:
    """A drop-in replacement for ``asyncpg.create_pool``.

    Takes the same arguments and returns a :class:`Pool` with the same
    methods. ``reset`` may also name a policy, ``"full"`` (the default) or
    ``"rollback"``. With ``reset=None``, a ``connection_class`` that
    overrides ``reset()`` or ``get_reset_query()`` resets its connections
    itself, as in asyncpg. Options of asyncpool's own: ``pgbouncer``,
    ``acquire_timeout`` (the default for ``acquire()``; ``None`` waits
    forever), ``max_lifetime``, ``max_waiting``, ``health_check_interval``
    (at most half of ``max_inactive_connection_lifetime``, so that idle
    connections are retired on time) and ``name``. ``loop`` is accepted and
    ignored: the pool belongs to the loop that opens it.
    """
    del loop
    _check_sizes(init_size, min_size, max_size)
    if init_size is None:
        init_size = min_size
    elif init_size > min_size and (
        acquire_timeout == 0 or (isinstance(max_waiting, int) and max_waiting < init_size - min_size)
    ):
        # Opening grows past min_size by borrowing init_size connections at
        # once: the ones beyond min_size wait for their connects.
        raise ValueError(
            f"init_size={init_size} above min_size={min_size} needs acquire_timeout > 0 and max_waiting >= "
            f"{init_size - min_size}, got acquire_timeout={acquire_timeout!r}, max_waiting={max_waiting!r}"
        )
    if not isinstance(max_queries, int) or max_queries < 1:
        raise ValueError(f"max_queries must be an int >= 1, got {max_queries!r}")
    if not isinstance(max_inactive_connection_lifetime, (int, float)) or max_inactive_connection_lifetime < 0:
        raise ValueError(
            f"max_inactive_connection_lifetime must be >= 0 seconds, got {max_inactive_connection_lifetime!r}"
        )
    if connection_class is not None:
        if not (isinstance(connection_class, type) and issubclass(connection_class, asyncpg.Connection)):
            raise TypeError(f"connection_class must be a subclass of asyncpg.Connection, got {connection_class!r}")
        connect_kwargs["connection_class"] = connection_class
    if record_class is not None:
        if not (isinstance(record_class, type) and issubclass(record_class, asyncpg.Record)):
            raise TypeError(f"record_class must be a subclass of asyncpg.Record, got {record_class!r}")
        connect_kwargs["record_class"] = record_class
    if reset is None:
        # asyncpg's pool then calls ``Connection.reset()``, which runs
        # ``get_reset_query()``: a class that overrides either chose its reset.
        if connection_class is not None and overrides_reset(connection_class):
            reset = reset_by_connection_class
        else:
            reset = "full"
    connector = AsyncpgConnector(
        dsn,
        pgbouncer=pgbouncer,
        reset=reset,
        init=init,
        setup=setup,
        max_queries=max_queries,
        connect=connect,
        **connect_kwargs,
    )
    inactive = float(max_inactive_connection_lifetime)
    if (
        inactive > 0
        and isinstance(health_check_interval, (int, float))
        and not isinstance(health_check_interval, bool)
        and health_check_interval > inactive / 2
    ):
        # Idle connections are retired at health-check rounds: this keeps
        # them from living up to a whole interval past their lifetime
        # (asyncpg retires each close to the configured time).
        health_check_interval = inactive / 2
    connect_timeout = connect_kwargs.get("timeout")
    return Pool(
        connector,
        min_size=min_size,
        max_size=max_size,
        init_size=init_size,
        acquire_timeout=acquire_timeout,
        max_inactive_connection_lifetime=inactive,
        max_lifetime=max_lifetime,
        max_waiting=max_waiting,
        health_check_interval=health_check_interval,
        connect_timeout=10.0 if connect_timeout is None else float(connect_timeout),
        name=name,
    )
