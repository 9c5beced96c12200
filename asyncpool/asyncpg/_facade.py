"""``Pool``: asyncpg's ``Pool`` interface over an :class:`~asyncpool.AsyncPool`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, final

import asyncpg.pool

from .._lease import Lease
from .._pool import AsyncPool
from .._stats import PoolStats
from ._connector import AsyncpgConnector
from ._errors import PoolClosedError, PoolInterfaceError
from ._opening import Watched
from ._proxy import Holder, PoolConnectionProxy, lend
from ._session import failed_before_sending, terminate

if TYPE_CHECKING:
    from ._proxy import Proxy
    from ._types import Connection

    _AsyncpgPool = asyncpg.pool.Pool[Any]
else:
    _AsyncpgPool = asyncpg.pool.Pool

logger = logging.getLogger("asyncpool.asyncpg")
T = TypeVar("T")


def returning(conn: Any) -> None:
    """What asyncpg's pool does as a connection comes back, before its reset:
    statements, cursors and transactions made through the lent proxy stop
    working (``_on_release``, which also warns of listeners left behind),
    and a transaction left open outside ``async with conn.transaction()`` is
    reported to the event loop's exception handler, with asyncpg's message
    (the reset rolls it back)."""
    conn._on_release()
    if conn.is_closed():
        return  # terminated under its borrower (close timed out, say): no session left
    if conn.is_in_transaction() or conn._top_xact is not None:
        top = conn._top_xact
        if top is None or not top._managed:
            conn._loop.call_exception_handler({"message": f"Resetting connection with an active transaction {conn!r}"})


@final
class PoolAcquireContext:
    """What :meth:`Pool.acquire` returns: ``await`` it for a connection you
    release yourself, or use it as ``async with`` to release on the way out."""

    __slots__ = ("_lease", "_pool", "_proxy", "_timeout")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._lease: Lease[Connection] | None = None
        self._proxy: Proxy | None = None

    def __await__(self) -> Generator[Any, None, Proxy]:
        return self._pool._acquire(self._timeout).__await__()

    async def __aenter__(self) -> Proxy:
        pool = self._pool
        pool._check_open()
        core = pool._core
        connector = pool._connector
        while True:
            lease = core.acquire(self._timeout)
            conn = await lease.__aenter__()
            if connector.setup is None and not connector.is_expired(conn):
                # The common case, without a coroutine of its own.
                proxy: Proxy | None = PoolConnectionProxy(pool._holder, conn)  # type: ignore[arg-type]
            else:
                proxy = await pool._prepare_lent(conn)
            if proxy is not None:
                self._lease = lease
                self._proxy = proxy
                return proxy

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease = self._lease
        if lease is None:
            return
        self._lease = None
        proxy: Any = self._proxy
        self._proxy = None
        # Detached first: whatever still holds the proxy cannot reach the
        # connection once its reset has begun.
        conn = proxy._detach()
        if conn is not None:  # (None: released by hand inside the block)
            returning(conn)
        await lease.__aexit__(exc_type, exc, tb)


@final
class Pool(_AsyncpgPool):
    """``asyncpg.Pool``'s interface over an :class:`~asyncpool.AsyncPool`.

    Made by :func:`create_pool`; ``await`` it (or enter ``async with``) to
    open it. The underlying pool is :attr:`pool`, its statistics
    :meth:`stats`. It is an ``asyncpg.pool.Pool`` to ``isinstance`` (every
    public method of asyncpg's is overridden here; none of asyncpg's pool
    code runs).
    """

    __slots__ = ("_connector", "_core", "_fatal", "_holder", "_init_size", "_opened", "_opening", "_terminating")

    def __init__(
        self,
        connector: AsyncpgConnector,
        *,
        min_size: int,
        max_size: int,
        init_size: int,
        acquire_timeout: float | None,
        max_inactive_connection_lifetime: float,
        max_lifetime: float | None,
        max_waiting: int | None,
        health_check_interval: float | None,
        connect_timeout: float | None,
        name: str | None,
    ) -> None:
        self._connector = connector
        self._core: AsyncPool[Connection] = AsyncPool(
            Watched(connector, self),
            min_size=min_size,
            max_size=max_size,
            timeout=acquire_timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_inactive_connection_lifetime or None,
            health_check_interval=health_check_interval,
            connect_timeout=connect_timeout,
            name=name,
        )
        self._init_size = init_size
        self._opened = False
        self._opening = False
        self._holder = Holder(self)
        #: Set while opening: the first permanent connect error goes here.
        self._fatal: asyncio.Future[BaseException] | None = None
        self._terminating: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        core = repr(self._core)
        return f"<asyncpool.asyncpg.Pool {self._connector!r} {core[1:-1]}>"

    @property
    def pool(self) -> AsyncPool[Connection]:
        """The :class:`~asyncpool.AsyncPool` doing the work."""
        return self._core

    @property
    def connector(self) -> AsyncpgConnector:
        return self._connector

    def stats(self) -> PoolStats:
        return self._core.stats()

    # -- opening and closing -------------------------------------------------

    def __await__(self) -> Generator[Any, None, Pool]:
        return self._open().__await__()

    async def __aenter__(self) -> Pool:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _open(self) -> Pool:
        # As asyncpg's: awaiting the pool twice at once, or using it before it
        # is open, is a race in the caller's code, reported as such.
        if self._opened:
            return self
        if self._opening:
            raise PoolInterfaceError("pool is being initialized in another task")
        if self._core.closed:
            raise PoolClosedError("pool is closed")
        self._opening = True
        try:
            await self._open_core()
            self._opened = True
        finally:
            self._opening = False
        return self

    def _check_open(self) -> None:
        """Raise as asyncpg's pool does when used before it is open, or once
        it is closed."""
        if self._core.closed:
            raise PoolClosedError("pool is closed")
        if not self._opened:
            if self._opening:
                raise PoolInterfaceError(
                    "pool is being initialized, but not yet ready: likely there is a race between creating a "
                    "pool and using it"
                )
            raise PoolInterfaceError("pool is not initialized")

    async def _open_core(self) -> None:
        """Open, and wait for ``min_size`` connections; a connect error that
        retrying cannot cure (bad password, no such database) or an error
        raised by ``init`` is raised at once, the others are retried until
        the acquire timeout."""
        core = self._core
        loop = asyncio.get_running_loop()
        self._fatal = fatal = loop.create_future()
        filled = loop.create_task(self._fill())
        try:
            await asyncio.wait((filled, fatal), return_when=asyncio.FIRST_COMPLETED)
            if fatal.done():
                raise fatal.result()
            filled.result()
        except BaseException:
            # Failed or cancelled: stop the connect attempts; a pool that did
            # not open is closed, as asyncpg's is.
            filled.cancel()
            await core.close()
            raise
        finally:
            self._fatal = None

    async def _fill(self) -> None:
        """Open with ``min_size`` connections, then grow to ``init_size``:
        lend that many at once and give them back (those above ``min_size``
        are retired when idle past ``max_inactive_connection_lifetime``)."""
        core = self._core
        await core.open(wait=True)
        if core.stats().size >= self._init_size:
            return
        lent: list[Connection] = []

        async def take() -> None:
            lent.append(await core.acquire())  # no await between the two

        try:
            outcomes = await asyncio.gather(*(take() for _ in range(self._init_size)), return_exceptions=True)
            while lent:
                await core.release(lent.pop())
        finally:
            # Failed or cancelled (opening gave up, or an init error was
            # reported): what is still lent would hold ``close()`` forever.
            # ``discard=True`` never suspends, so no cancellation cuts it short.
            while lent:
                await core.release(lent.pop(), discard=True)
        failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failure is not None:
            raise failure

    async def close(self) -> None:
        """Close the pool once every connection has been released.

        If the wait is cancelled or fails (``asyncio.wait_for(pool.close(),
        10)`` timing out), the pool is terminated, as asyncpg's is: the
        caller gave up waiting, so connections still lent are dropped now
        rather than left open for their borrowers to return someday.
        """
        if self._core.on_another_loop():
            # Not this loop's pool: the core raises PoolError (or returns, if
            # closed already) without changing anything; terminating from
            # here would drop the owner's connections from a foreign thread.
            await self._core.close()
            return
        try:
            if self._terminating is not None:
                await self._terminating
            await self._core.close()
        except BaseException:
            self.terminate()
            raise

    def terminate(self) -> None:
        """Drop every connection at once and close the pool."""
        if self._terminating is not None:
            return
        self._connector.terminate_all()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        # The connections are gone already; this only lets the pool's
        # bookkeeping catch up, without waiting for their borrowers.
        self._terminating = loop.create_task(self._core.close(timeout=0))

    def is_closing(self) -> bool:
        return self._terminating is not None or self._core.closed

    async def expire_connections(self) -> None:
        """Replace every connection open now: idle ones on their next
        acquire, lent ones when they are released."""
        self._connector.expire_connections()

    def set_connect_args(self, dsn: str | None = None, **connect_kwargs: Any) -> None:
        """Use these arguments for new connections (existing ones stay until
        they are expired, see :meth:`expire_connections`)."""
        kept = {k: v for k, v in self._connector.connect_kwargs.items() if k in ("connection_class", "record_class")}
        self._connector.set_connect_args(dsn, **{**kept, **connect_kwargs})

    # -- sizes -----------------------------------------------------------------

    def get_size(self) -> int:
        return self._core.stats().size

    def get_idle_size(self) -> int:
        return self._core.stats().idle

    def get_min_size(self) -> int:
        return self._core.config.min_size

    def get_init_size(self) -> int:
        """How many connections opening the pool makes (``init_size``)."""
        return self._init_size

    def get_max_size(self) -> int:
        return self._core.config.max_size

    # -- leasing -----------------------------------------------------------------

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:  # type: ignore[override]
        """Borrow a connection: ``await`` it, or ``async with`` it.

        ``timeout=None`` means the pool's ``acquire_timeout`` (30 s unless
        set), not "wait forever"; a wait that outlives it raises
        :class:`~asyncpool.PoolTimeout` (also a ``TimeoutError``).
        """
        return PoolAcquireContext(self, timeout)

    async def release(self, connection: object, *, timeout: float | None = None) -> None:
        """Give back a connection from ``await pool.acquire()``.

        A connection this pool did not lend raises
        :class:`PoolInterfaceError` (an ``asyncpg.InterfaceError``); one
        released already is ignored, as asyncpg ignores it. ``timeout`` is
        accepted for compatibility; the pool bounds reset itself
        (``reset_timeout``).
        """
        if not self._lent_here(connection):
            raise PoolInterfaceError(
                f"Pool.release() received invalid connection: {connection!r} is not a member of this pool"
            )
        lent: Any = connection
        conn = lent._detach()
        if conn is None:
            return  # released already
        returning(conn)
        await self._core.release(conn)

    def _lent_here(self, connection: object) -> bool:
        """A proxy this pool lent (released since or not)."""
        return type(connection) is PoolConnectionProxy and getattr(connection, "_holder", None) is self._holder

    async def _acquire(self, timeout: float | None) -> Proxy:
        self._check_open()
        core = self._core
        while True:
            conn = await core.acquire(timeout)
            proxy = await self._prepare_lent(conn)
            if proxy is not None:
                return proxy

    async def _prepare_lent(self, conn: Connection) -> Proxy | None:
        """The proxy to lend for a just-lent connection, after ``setup`` ran
        on it; ``None`` if it was expired and has been given back for
        closing instead."""
        connector = self._connector
        if connector.is_expired(conn):
            await self._core.release(conn, discard=True)
            return None
        proxy: Any = lend(self._holder, conn)
        setup = connector.setup
        if setup is not None:
            try:
                await setup(proxy)
            except BaseException:
                # Half set up: it is closed (and replaced), never lent again.
                # Closed at once, as asyncpg closes it before raising: ``setup``
                # may have kept the proxy, and must see it closed.
                terminate(conn)
                await self._core.release(conn, discard=True)
                raise
        return proxy  # type: ignore[no-any-return]

    def _drop_statement_cache(self) -> None:
        # asyncpg's connection calls this (through a proxy's holder) when a
        # schema change has made cached statements stale: on every connection.
        for conn in self._connector.connections():
            conn._drop_local_statement_cache()  # type: ignore[attr-defined]

    def _drop_type_cache(self) -> None:
        for conn in self._connector.connections():
            conn._drop_local_type_cache()  # type: ignore[attr-defined]

    # -- query shortcuts ---------------------------------------------------------
    # Each runs on a connection of its own. If it fails before anything of it
    # reached the server (the session ended between the lend and the query:
    # ``failed_before_sending``), it runs once more, on another connection:
    # nothing was done, so nothing is done twice.

    async def _shortcut(self, run: Callable[[Proxy], Awaitable[T]]) -> T:
        retried = False
        while True:
            async with self.acquire() as conn:
                try:
                    return await run(conn)
                except Exception as exc:
                    if retried or not failed_before_sending(exc):
                        raise
                    logger.info("the session ended before the query was sent; running it on another connection")
                    retried = True
            # The lease ended normally: its reset finds the connection closed
            # and retires it.

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        status: str = await self._shortcut(lambda conn: conn.execute(query, *args, timeout=timeout))
        return status

    async def executemany(  # type: ignore[override]
        self, command: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None
    ) -> None:
        await self._shortcut(lambda conn: conn.executemany(command, args, timeout=timeout))

    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, record_class: type[Any] | None = None
    ) -> list[Any]:
        rows: list[Any] = await self._shortcut(
            lambda conn: conn.fetch(query, *args, timeout=timeout, record_class=record_class)
        )
        return rows

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: float | None = None) -> Any:
        return await self._shortcut(lambda conn: conn.fetchval(query, *args, column=column, timeout=timeout))

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, record_class: type[Any] | None = None
    ) -> Any:
        return await self._shortcut(
            lambda conn: conn.fetchrow(query, *args, timeout=timeout, record_class=record_class)
        )

    async def fetchmany(
        self,
        query: str,
        args: Iterable[Sequence[Any]],
        *,
        timeout: float | None = None,
        record_class: type[Any] | None = None,
    ) -> list[Any]:
        rows: list[Any] = await self._shortcut(
            lambda conn: conn.fetchmany(query, args, timeout=timeout, record_class=record_class)
        )
        return rows

    # -- COPY shortcuts ------------------------------------------------------------
    # The options after the required ones (``format``, ``delimiter``,
    # ``where``, ...) are passed on as they are: asyncpg's connection method
    # checks them, so they stay in step with the installed asyncpg.

    async def copy_from_table(
        self, table_name: str, *, output: Any, timeout: float | None = None, **options: Any
    ) -> str:
        status: str = await self._shortcut(
            lambda conn: conn.copy_from_table(table_name, output=output, timeout=timeout, **options)
        )
        return status

    async def copy_from_query(
        self, query: str, *args: Any, output: Any, timeout: float | None = None, **options: Any
    ) -> str:
        status: str = await self._shortcut(
            lambda conn: conn.copy_from_query(query, *args, output=output, timeout=timeout, **options)
        )
        return status

    async def copy_to_table(self, table_name: str, *, source: Any, timeout: float | None = None, **options: Any) -> str:
        status: str = await self._shortcut(
            lambda conn: conn.copy_to_table(table_name, source=source, timeout=timeout, **options)
        )
        return status

    async def copy_records_to_table(
        self, table_name: str, *, records: Any, timeout: float | None = None, **options: Any
    ) -> str:
        status: str = await self._shortcut(
            lambda conn: conn.copy_records_to_table(table_name, records=records, timeout=timeout, **options)
        )
        return status
