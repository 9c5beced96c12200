"""``Pool``: asyncpg's ``Pool`` interface over an :class:`~asyncpool.AsyncPool`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, final

from .._lease import Lease
from .._pool import AsyncPool
from .._stats import PoolStats
from ._connector import AsyncpgConnector
from ._opening import Watched
from ._session import failed_before_sending

if TYPE_CHECKING:
    from ._types import Connection

logger = logging.getLogger("asyncpool.asyncpg")
T = TypeVar("T")


@final
class PoolAcquireContext:
    """What :meth:`Pool.acquire` returns: ``await`` it for a connection you
    release yourself, or use it as ``async with`` to release on the way out."""

    __slots__ = ("_lease", "_pool", "_timeout")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._lease: Lease[Connection] | None = None

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._pool._acquire(self._timeout).__await__()

    async def __aenter__(self) -> Connection:
        pool = self._pool
        core = pool._core
        while True:
            lease = core.acquire(self._timeout)
            conn = await lease.__aenter__()
            if await pool._prepare_lent(conn):
                self._lease = lease
                return conn

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
        await lease.__aexit__(exc_type, exc, tb)


@final
class Pool:
    """``asyncpg.Pool``'s interface over an :class:`~asyncpool.AsyncPool`.

    Made by :func:`create_pool`; ``await`` it (or enter ``async with``) to
    open it. The underlying pool is :attr:`pool`, its statistics
    :meth:`stats`.
    """

    __slots__ = ("_connector", "_core", "_fatal", "_init_size", "_open_lock", "_opened", "_terminating")

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
        self._open_lock: asyncio.Lock | None = None
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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _open(self) -> Pool:
        if self._opened:
            return self
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if not self._opened:
                await self._open_core()
                self._opened = True
        return self

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

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        """Borrow a connection: ``await`` it, or ``async with`` it.

        ``timeout=None`` means the pool's ``acquire_timeout`` (30 s unless
        set), not "wait forever"; a wait that outlives it raises
        :class:`~asyncpool.PoolTimeout` (also a ``TimeoutError``).
        """
        return PoolAcquireContext(self, timeout)

    async def release(self, connection: Connection, *, timeout: float | None = None) -> None:
        """Give back a connection from ``await pool.acquire()``.

        ``timeout`` is accepted for compatibility; the pool bounds reset
        itself (``reset_timeout``).
        """
        await self._core.release(connection)

    async def _acquire(self, timeout: float | None) -> Connection:
        core = self._core
        while True:
            conn = await core.acquire(timeout)
            if await self._prepare_lent(conn):
                return conn

    async def _prepare_lent(self, conn: Connection) -> bool:
        """Run ``setup`` on a just-lent connection; ``False`` if it was
        expired and has been given back for closing instead."""
        connector = self._connector
        if connector.is_expired(conn):
            await self._core.release(conn, discard=True)
            return False
        setup = connector.setup
        if setup is not None:
            try:
                await setup(conn)
            except BaseException:
                # Half set up: it is closed (and replaced), never lent again.
                await self._core.release(conn, discard=True)
                raise
        return True

    # -- query shortcuts ---------------------------------------------------------
    # Each runs on a connection of its own. If it fails before anything of it
    # reached the server (the session ended between the lend and the query:
    # ``failed_before_sending``), it runs once more, on another connection:
    # nothing was done, so nothing is done twice.

    async def _shortcut(self, run: Callable[[Connection], Awaitable[T]]) -> T:
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

    async def executemany(self, command: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None) -> None:
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
