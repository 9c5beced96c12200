"""``AsyncpgConnector``: how the pool opens, checks, resets and closes
asyncpg connections."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, final

import asyncpg

from .._connector import Connector
from ._errors import RetireConnection
from ._idle import IDLE_TIMEOUTS_QUERY, IdleTimeouts, idle_margin
from ._prepared import take_sql_prepare_seen
from ._secrets import Secrets, masked_or_withheld
from ._session import SessionWatch, session_aware, terminate
from ._sql import (
    BASELINE_QUERY,
    DEALLOCATE_SQL_PREPARED,
    FULL_RESET_QUERY,
    PING,
    RESET_TIMEOUT,
    ROLLBACK,
    restoring_queries,
)
from ._watchdog import ResetWatchdog

if TYPE_CHECKING:
    from ._types import Connection, ConnHook

logger = logging.getLogger("asyncpool.asyncpg")

CONNECT_PARAMETERS = frozenset(inspect.signature(asyncpg.connect).parameters) - {"dsn"}


class Opened(NamedTuple):
    """What the connector knows of a connection it opened."""

    conn: Connection
    #: See ``expire_connections``.
    generation: int
    #: What gives it a clean session (the full policy).
    reset_query: str
    timeouts: IdleTimeouts
    #: Queries asyncpool itself ran on it, which ``max_queries`` does not count.
    own_queries: int
    #: What sees the server end its session (``None``: a transport that
    #: could not take one).
    watch: SessionWatch | None


@final
class AsyncpgConnector(Connector["Connection"]):
    """Open, check, reset and close ``asyncpg`` connections for a pool.

    ``dsn`` and ``connect_kwargs`` go to ``asyncpg.connect``.

    * ``pgbouncer=True``: safe behind PgBouncer in transaction mode
      (``statement_cache_size=0``, and reset only rolls back).
    * ``reset``: ``"full"`` (default) or ``"rollback"``, see the module
      docstring; or an ``async (conn)`` function that runs after the
      rollback instead of the full reset query (asyncpg's ``reset=``).
    * ``init``: ``async (conn)``, once per new connection (type codecs,
      ``SET ROLE``). The full reset keeps the role, session authorization
      and settings it leaves (one extra query per new connection to read
      them); temporary tables, ``LISTEN`` and custom dotted variables made
      there do not survive it (use ``setup``, or ``server_settings``).
    * ``setup``: ``async (conn)``, run on every lease by the :class:`Pool`
      that :func:`create_pool` returns. The :class:`~asyncpool.Connector`
      protocol has no per-lease hook, so a bare :class:`~asyncpool.AsyncPool`
      does not call it.
    * ``validate_timeout``: bound on the validation round trip, and on the
      wait for an interrupted query's cancellation to settle.
    * ``reset_timeout``: bound on the reset round trip (the connection is
      terminated once it overruns, checked every ``reset_timeout / 2``) and
      on a graceful close.
    * ``max_queries``: retire a connection once it has run this many queries
      (checked when it is released).
    * ``connect``: called instead of ``asyncpg.connect``, as asyncpg's pool
      calls it: ``connect(dsn, loop=, connection_class=, record_class=,
      **connect_kwargs)``, the two classes defaulting to asyncpg's.

    The password in ``dsn`` or ``password=`` never appears in this object's
    repr, in its log records, or in the connect errors it raises.
    """

    __slots__ = (
        "_connect_fn",
        "_connect_kwargs",
        "_dsn",
        "_generation",
        "_init",
        "_live",
        "_max_queries",
        "_orphans",
        "_pgbouncer",
        "_policy",
        "_reset_fn",
        "_reset_timeout",
        "_secrets",
        "_validate_timeout",
        "_watchdog",
        "background_reset",
        "last_init_error",
        "setup",
    )

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pgbouncer: bool = False,
        reset: str | ConnHook = "full",
        init: ConnHook | None = None,
        setup: ConnHook | None = None,
        validate_timeout: float = 2.0,
        reset_timeout: float = RESET_TIMEOUT,
        max_queries: int | None = None,
        connect: Callable[..., Awaitable[Connection]] | None = None,
        **connect_kwargs: Any,
    ) -> None:
        if not callable(reset) and reset not in ("full", "rollback"):
            raise ValueError(f"reset must be 'full', 'rollback' or an async function, got {reset!r}")
        for option, value in (("validate_timeout", validate_timeout), ("reset_timeout", reset_timeout)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{option} must be a number of seconds > 0, got {value!r}")
        if max_queries is not None and (not isinstance(max_queries, int) or max_queries < 1):
            raise ValueError(f"max_queries must be an int >= 1 or None, got {max_queries!r}")
        self._pgbouncer = bool(pgbouncer)
        self._secrets = Secrets()
        self._dsn: str | None = None
        self._connect_kwargs: dict[str, Any] = {}
        self._connect_fn = connect
        self.set_connect_args(dsn, **connect_kwargs)
        self._init = init
        #: The per-lease hook; see the class docstring.
        self.setup = setup
        self._reset_fn: ConnHook | None = reset if callable(reset) else None
        # Behind PgBouncer the session is not ours to reset: rollback only.
        policy: str = "custom" if callable(reset) else reset
        if self._pgbouncer and policy == "full":
            policy = "rollback"
        self._policy = policy
        #: Tells the pool to run reset off the releasing caller's path: worth
        #: it when reset is a round trip, not when it is (usually) free.
        self.background_reset = policy != "rollback"
        self._validate_timeout = float(validate_timeout)
        self._reset_timeout = float(reset_timeout)
        self._max_queries = max_queries
        # Connections this connector opened and has not closed yet.
        self._live: dict[int, Opened] = {}
        self._generation = 0
        # Bounds every reset round trip, with one timer for them all.
        self._watchdog = ResetWatchdog(self._reset_timeout)
        #: Connects whose caller gave up (see ``connect``), until they end.
        self._orphans: set[asyncio.Task[Connection]] = set()
        #: What ``init`` raised the last time it failed (``create_pool``
        #: raises it from opening at once instead of retrying).
        self.last_init_error: BaseException | None = None

    def __repr__(self) -> str:
        # The password field is masked, not the password's text: a password
        # that is also the user name must not mangle the rest of the DSN.
        if self._dsn is not None:
            target = masked_or_withheld(self._dsn)
        else:
            shown = {k: v for k, v in self._connect_kwargs.items() if k in ("host", "port", "user", "database")}
            target = " ".join(f"{k}={v!r}" for k, v in shown.items()) or "(from the environment)"
        return f"<AsyncpgConnector {target} reset={self._policy!r}{' pgbouncer' if self._pgbouncer else ''}>"

    @property
    def reset_policy(self) -> str:
        """``"full"``, ``"rollback"`` or ``"custom"``: what reset really does."""
        return self._policy

    @property
    def pgbouncer(self) -> bool:
        return self._pgbouncer

    @property
    def connect_kwargs(self) -> dict[str, Any]:
        """A copy of what goes to ``asyncpg.connect`` besides the DSN."""
        return dict(self._connect_kwargs)

    def set_connect_args(self, dsn: str | None = None, **connect_kwargs: Any) -> None:
        """Use these arguments for connections opened from now on."""
        unknown = set(connect_kwargs) - CONNECT_PARAMETERS
        if unknown and self._connect_fn is None:
            raise TypeError(f"asyncpg.connect() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        if self._pgbouncer:
            cache = connect_kwargs.setdefault("statement_cache_size", 0)
            if cache != 0:
                raise ValueError(
                    f"pgbouncer=True needs statement_cache_size=0 (named prepared statements do not survive "
                    f"PgBouncer's transaction mode), got statement_cache_size={cache!r}"
                )
        self._secrets.add_from(dsn, connect_kwargs)
        self._dsn = dsn
        self._connect_kwargs = connect_kwargs

    # -- the Connector protocol --------------------------------------------

    async def connect(self) -> Connection:
        """Open a connection (and run ``init`` on it).

        asyncpg's connect is not safe to cut off half-way: cancelled while its
        socket is being set up, it leaves a future whose exception nobody
        retrieves. So it runs in a task of its own, shielded: if this call is
        cancelled (the pool closing, or its ``connect_timeout``), the connect
        still ends on its own bound (asyncpg's ``timeout``), and the
        connection it brings, if any, is terminated at once.
        """
        opening = asyncio.get_running_loop().create_task(self._open())
        try:
            return await asyncio.shield(opening)
        except BaseException:
            if opening.done():
                # It may have finished in the very turn we were cut off: its
                # connection is nobody's then, and must not be left open.
                self._orphan_done(opening)
            else:
                self._orphans.add(opening)
                opening.add_done_callback(self._orphan_done)
            raise

    def _orphan_done(self, opening: asyncio.Task[Connection]) -> None:
        self._orphans.discard(opening)
        if opening.cancelled() or opening.exception() is not None:
            return  # retrieved: nothing was opened
        conn = opening.result()
        self._live.pop(id(conn), None)
        terminate(conn)

    async def _open(self) -> Connection:
        generation = self._generation
        kwargs = dict(self._connect_kwargs)
        # Operations after the server ended the session say so (see
        # ``_session``), whatever connection class was asked for.
        kwargs["connection_class"] = session_aware(kwargs.get("connection_class", asyncpg.Connection))
        try:
            if self._connect_fn is not None:
                # Called exactly as asyncpg's pool calls it: a wrapper may
                # require ``loop``, ``connection_class`` and ``record_class``.
                conn = await self._connect_fn(
                    self._dsn, **{"record_class": asyncpg.Record, **kwargs, "loop": asyncio.get_running_loop()}
                )
            else:
                conn = await asyncpg.connect(self._dsn, **kwargs)
        except Exception as exc:
            clean = self._secrets.scrub(exc)
            if clean is exc:
                raise
            raise clean from None
        # At once, before any other await: from here on, a server that ends
        # the session is seen the moment its goodbye arrives.
        watch = SessionWatch.install(conn)
        reset_query = FULL_RESET_QUERY
        try:
            if self._init is not None:
                try:
                    # Who we logged in as, from the server's startup report:
                    # ``init`` may change the session user, and that is the
                    # only record of the original left afterwards.
                    login: str | None = getattr(conn.get_settings(), "session_authorization", None)
                    await self._init(conn)
                    if self._policy == "full":
                        reset_query = await self._baseline_reset_query(conn, login)
                except BaseException as exc:
                    clean = self._secrets.scrub(exc)
                    self.last_init_error = clean
                    if clean is exc:
                        raise
                    raise clean from None
            raw: Any = conn
            before = raw._protocol.queries_count
            timeouts = await self._idle_timeouts(conn)
            own_queries = raw._protocol.queries_count - before
        except BaseException:
            terminate(conn)
            raise
        self._live[id(conn)] = Opened(conn, generation, reset_query, timeouts, own_queries, watch)
        return conn

    async def _idle_timeouts(self, conn: Connection) -> IdleTimeouts:
        """The session's idle timeouts, read once (after ``init``, which may
        set them). Behind PgBouncer they are the server connections' business,
        not this client's: not read."""
        if self._pgbouncer:
            return IdleTimeouts(None, None)
        row: Any = await conn.fetchrow(IDLE_TIMEOUTS_QUERY, timeout=self._reset_timeout)
        session, in_transaction = (None if ms is None or ms <= 0 else ms / 1000.0 for ms in row)
        return IdleTimeouts(session, in_transaction)

    def idle_timeouts(self, conn: Connection) -> IdleTimeouts:
        """The server's idle timeouts for ``conn``, as read when it connected."""
        opened = self._live.get(id(conn))
        return opened.timeouts if opened is not None else IdleTimeouts(None, None)

    def watch(self, conn: Connection, dead: Callable[[], None]) -> None:
        """Call ``dead()`` the moment ``conn`` ends, however it ends (the
        server's goodbye, a reset or closed socket), so the pool retires it
        at once rather than when it next would lend it."""
        opened = self._live.get(id(conn))
        if conn.is_closed():
            dead()  # it ended before anyone asked to hear of it
        elif opened is not None and opened.watch is not None:
            opened.watch.on_end = dead

    def idle_limit(self, conn: Connection) -> float | None:
        """How long ``conn`` may stay idle in the pool before it is retired
        instead of lent: the server's ``idle_session_timeout`` less
        :func:`idle_margin`, or ``None`` when the server has none. The pool
        asks once, when the connection joins it."""
        session = self.idle_timeouts(conn).session
        return None if session is None else max(session - idle_margin(session), 0.0)

    async def _baseline_reset_query(self, conn: Connection, login: str | None) -> str:
        """The full reset query for ``conn``, followed by what puts back the
        session state ``init`` left: the full reset runs as the login role
        with default settings, and the borrower must not get more (or other)
        rights than ``init`` gave the connection."""
        row: Any = await conn.fetchrow(BASELINE_QUERY, timeout=self._reset_timeout)
        candidates = restoring_queries(login, *row)
        if len(candidates) == 1:
            return candidates[0]
        # Which identity may set them is not known: a superuser-only setting
        # made before ``init`` dropped privileges needs the login role, one
        # granted (``GRANT SET ON PARAMETER``) to the role ``init`` switched
        # to needs that role. Prove one order now, on the fresh connection
        # (a failed attempt rolls back whole), rather than have every
        # release fail and the connection replaced for every lease.
        last: BaseException | None = None
        for query in candidates:
            try:
                await conn.execute(query, timeout=self._reset_timeout)
            except asyncpg.PostgresError as exc:
                last = exc
                continue
            return query
        raise RuntimeError(
            "the full reset cannot restore the session state init left (as the login role, or as the role "
            f"init switched to): {type(last).__name__}: {last}; use reset='rollback' or a custom reset"
        ) from last

    def is_closed(self, conn: Connection) -> bool:
        """Known dead from local state alone (the pool asks on every lend)."""
        closed: bool = conn.is_closed()
        return closed

    async def validate(self, conn: Connection) -> bool:
        """A ``SELECT 1`` round trip under ``validate_timeout``; a connection
        asyncpg already knows is closed fails without one."""
        if conn.is_closed():
            return False
        raw: Any = conn  # asyncpg's internals are not part of its typed API
        try:
            if raw._protocol._is_cancelling():
                await self._settle(conn)
            await conn.execute(PING, timeout=self._validate_timeout)
        except Exception as exc:
            logger.debug("validation failed: %s: %s", type(exc).__name__, self._secrets.mask(str(exc)))
            # Whatever it was doing, nobody will use it again: drop it now
            # rather than wait for a graceful close that may hang too.
            terminate(conn)
            return False
        return True

    async def reset(self, conn: Connection) -> None:
        """Make ``conn`` clean for the next borrower, per the reset policy;
        raising makes the pool close it instead."""
        if conn.is_closed():
            raise RetireConnection("connection is closed")
        raw: Any = conn  # asyncpg's internals are not part of its typed API
        protocol = raw._protocol
        interrupted = protocol._is_cancelling()
        if interrupted:
            # The last borrower was cancelled mid-query: asyncpg has asked the
            # server to cancel it and must see that through before the
            # connection can run anything else.
            await self._settle(conn)
        if self._max_queries is not None:
            opened = self._live.get(id(conn))
            ran = protocol.queries_count - (opened.own_queries if opened is not None else 0)
            if ran >= self._max_queries:
                raise RetireConnection(f"connection ran {ran} queries (max_queries={self._max_queries})")
        if self._generation and self.is_expired(conn):
            raise RetireConnection("connection was expired by expire_connections()")
        policy = self._policy
        if policy == "rollback":
            forget_listeners(conn)
            if forget_transaction(conn):
                await self._watchdog.run(conn, ROLLBACK)
            elif interrupted:
                await self._watchdog.run(conn, PING)
        elif policy == "full":
            opened = self._live.get(id(conn))
            query = FULL_RESET_QUERY if opened is None else opened.reset_query
            drop_prepared = take_sql_prepare_seen(conn)
            if drop_prepared:
                query += DEALLOCATE_SQL_PREPARED
            if forget_transaction(conn):
                query = f"{ROLLBACK};{query}"
            forget_listeners(conn)
            await self._watchdog.run(conn, query)
            if drop_prepared:
                take_sql_prepare_seen(conn)  # the drop names pg_prepared_statements itself
        else:
            if forget_transaction(conn):
                await self._watchdog.run(conn, ROLLBACK)
            forget_listeners(conn)
            reset_fn: Any = self._reset_fn
            try:
                await reset_fn(conn)
            except BaseException:
                terminate(conn)
                raise

    async def close(self, conn: Connection) -> None:
        self._live.pop(id(conn), None)
        raw: Any = conn
        if conn.is_closed() or raw._protocol._is_cancelling():
            # Nothing to say goodbye to, or a query whose cancellation is
            # still pending: asyncpg would wait for it. Just drop the socket.
            terminate(conn)
            return
        try:
            await conn.close(timeout=self._reset_timeout)
        except Exception as exc:
            # asyncpg has aborted the connection by now; the socket is gone.
            logger.debug("graceful close failed: %s: %s", type(exc).__name__, self._secrets.mask(str(exc)))
            terminate(conn)

    # -- generations and termination (used by create_pool's Pool) -----------

    def expire_connections(self) -> None:
        """Connections opened before this call are closed instead of reused:
        when next released, and by :class:`Pool` when next acquired."""
        self._generation += 1

    def is_expired(self, conn: Connection) -> bool:
        if not self._generation:
            return False
        found = self._live.get(id(conn))
        return found is not None and found.generation != self._generation

    def connections(self) -> list[Connection]:
        """Every connection this connector opened and has not closed."""
        return [opened.conn for opened in self._live.values()]

    def terminate_all(self) -> None:
        """Drop every open connection this connector made, at once."""
        for opened in list(self._live.values()):
            terminate(opened.conn)

    # -- internals -----------------------------------------------------------

    async def _settle(self, conn: Connection) -> None:
        bound = self._validate_timeout
        raw: Any = conn
        try:
            await asyncio.wait_for(raw._protocol._wait_for_cancellation(), bound)
        except asyncio.TimeoutError:
            terminate(conn)
            raise RetireConnection(f"a cancelled query did not stop within {bound} s; connection terminated") from None
        except BaseException:
            terminate(conn)
            raise
        if conn.is_closed():
            raise RetireConnection("connection closed while its cancelled query settled")


def forget_transaction(conn: Any) -> bool:
    """Forget asyncpg's view of an open transaction; ``True`` if the server
    has one that needs a ``ROLLBACK``."""
    if conn._top_xact is not None:
        # A Transaction object left unfinished: the next borrower's
        # ``conn.transaction()`` must start a new top-level transaction.
        conn._top_xact = None
    return bool(conn.is_in_transaction())


def forget_listeners(conn: Any) -> None:
    # The callbacks of ``add_listener`` and ``add_log_listener`` belong to
    # the borrower that added them; the server side goes with ``UNLISTEN *``.
    listeners = conn._listeners
    if listeners:
        listeners.clear()
    log_listeners = conn._log_listeners
    if log_listeners:
        log_listeners.clear()
