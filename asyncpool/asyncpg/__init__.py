"""PostgreSQL through asyncpg: a connector, and a drop-in ``create_pool``.

:class:`AsyncpgConnector` teaches :class:`asyncpool.AsyncPool` how to open,
check, clean and close ``asyncpg`` connections::

    pool = AsyncPool(AsyncpgConnector("postgresql://app@db/app"), max_size=20)
    async with pool, pool.acquire() as conn:
        await conn.fetch("SELECT ...")

:func:`create_pool` takes ``asyncpg.create_pool``'s arguments and returns a
:class:`Pool` with ``asyncpg.Pool``'s methods, so existing code switches by
changing one import.

What "clean" means is the reset policy, chosen per connector:

``"full"`` (the default)
    Roll back an open transaction, then drop all session state in one round
    trip: ``SET SESSION AUTHORIZATION DEFAULT``, ``RESET ROLE``,
    ``RESET ALL``, ``CLOSE ALL``, ``UNLISTEN *``,
    ``pg_advisory_unlock_all()``, ``DISCARD TEMP``, ``DISCARD SEQUENCES``,
    and a ``DEALLOCATE`` of each statement made with SQL ``PREPARE``.
    That is ``DISCARD ALL`` without ``DEALLOCATE ALL`` and
    ``DISCARD PLANS``, which would throw away asyncpg's statement cache (and
    ``DISCARD ALL`` cannot run in the implicit transaction of a
    multi-statement query anyway). It costs a round trip, so the pool runs
    it in the background: the releasing task does not wait for it.
    What an ``init`` hook set up (``SET ROLE``, ``SET SESSION
    AUTHORIZATION``, ``SET``) is put back in the same round trip: the
    connection returns to its state right after connect and ``init``.
``"rollback"``
    Only roll back an open transaction. asyncpg knows the transaction state
    locally, so releasing an idle connection costs no round trip at all;
    but a ``SET``, ``SET ROLE``, temporary table, advisory lock or
    ``LISTEN`` made by one borrower is seen by the next.

Behind PgBouncer in transaction mode (``pgbouncer=True``) session state does
not belong to the client, so only the rollback is done, and asyncpg's
statement cache is off (``statement_cache_size=0``, asyncpg's documented
setting for PgBouncer): it then uses unnamed statements only, so no named
prepared statement outlives a transaction.

A lease whose task was cancelled while a query was in flight leaves asyncpg
waiting for the server to acknowledge the cancellation. Before such a
connection is lent again, reset waits a short, bounded time for that to
settle and then proves the connection works with a round trip; if it does
not settle, the connection is terminated and replaced.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, final
from urllib.parse import unquote, urlsplit

try:
    import asyncpg
    import asyncpg.exceptions
except ImportError as _exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "asyncpool.asyncpg needs asyncpg; install it with: pip install 'asyncpool-core[asyncpg]'"
    ) from _exc

from .._connector import Connector
from .._errors import PoolError
from .._lease import Lease
from .._pool import AsyncPool
from .._stats import PoolStats
from ._session import SessionEndedError, SessionWatch, failed_before_sending, session_aware, terminate

if TYPE_CHECKING:
    from typing import TypeAlias

    Connection: TypeAlias = asyncpg.Connection[Any]
    ConnHook: TypeAlias = Callable[[Connection], Awaitable[object]]

__all__ = [
    "AsyncpgConnector",
    "IdleTimeouts",
    "Pool",
    "PoolAcquireContext",
    "SessionEndedError",
    "create_pool",
    "mask_dsn",
]

logger = logging.getLogger("asyncpool.asyncpg")
T = TypeVar("T")


#: Everything a session can carry over to the next borrower, in one round
#: trip. Session authorization first, so the rest runs as the login role.
FULL_RESET_QUERY = (
    "SET SESSION AUTHORIZATION DEFAULT;"
    "RESET ROLE;"
    "RESET ALL;"
    "CLOSE ALL;"
    "UNLISTEN *;"
    "SELECT pg_advisory_unlock_all();"
    "DISCARD TEMP;"
    "DISCARD SEQUENCES;"
    # Statements made with SQL PREPARE (DEALLOCATE ALL would also drop
    # asyncpg's own statement cache, which is protocol-level: from_sql false).
    "DO $asyncpool$DECLARE s text; BEGIN"
    " FOR s IN SELECT name FROM pg_prepared_statements WHERE from_sql LOOP"
    " EXECUTE 'DEALLOCATE ' || quote_ident(s); END LOOP; END$asyncpool$;"
)
_ROLLBACK = "ROLLBACK"
_PING = "SELECT 1"
#: The connector's default ``reset_timeout``; ``create_pool`` keeps it, and
#: bounds a ``connection_class``'s own ``reset()`` with it too.
_RESET_TIMEOUT = 5.0

#: What an ``init`` hook may have changed in the session, read once right
#: after it ran. ``source = 'session'`` is exactly what ``SET`` (or
#: ``set_config(..., false)``) changed; settings from the startup packet
#: (``server_settings``) have source ``client`` and survive ``RESET ALL``.
_BASELINE_QUERY = (
    "SELECT session_user::text, current_setting('role'),"
    " array(SELECT name FROM pg_settings WHERE source = 'session' ORDER BY name),"
    " array(SELECT setting FROM pg_settings WHERE source = 'session' ORDER BY name)"
)

#: Connect errors that retrying will not cure: ``create_pool`` raises them at
#: once instead of retrying until its timeout, as ``asyncpg.create_pool`` does.
_PERMANENT_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # includes a wrong password
    asyncpg.exceptions.InvalidCatalogNameError,  # no such database
    asyncpg.exceptions.ClientConfigurationError,
    ValueError,
    TypeError,
)

_CONNECT_PARAMETERS = frozenset(inspect.signature(asyncpg.connect).parameters) - {"dsn"}

#: The server's idle timeouts for this session, in milliseconds (``NULL``
#: where the server predates them). Read once per connection, after ``init``.
_IDLE_TIMEOUTS_QUERY = (
    "SELECT (SELECT setting::float8 FROM pg_settings WHERE name = 'idle_session_timeout'),"
    " (SELECT setting::float8 FROM pg_settings WHERE name = 'idle_in_transaction_session_timeout')"
)


class IdleTimeouts(NamedTuple):
    """The server's idle timeouts for one session, in seconds (``None``: off).

    ``session`` (``idle_session_timeout``) ends a session idle outside a
    transaction: the pool retires a connection before it has been idle that
    long (see :meth:`AsyncpgConnector.idle_limit`). ``in_transaction``
    (``idle_in_transaction_session_timeout``) ends one idle inside a
    transaction; a pooled connection never is (release rolls back), so it
    only ends sessions a borrower leaves idle in a transaction, and the
    borrower's next operation raises :class:`SessionEndedError` saying so.
    """

    session: float | None
    in_transaction: float | None


def idle_margin(timeout: float) -> float:
    """How long before the server's ``idle_session_timeout`` a connection is
    retired rather than lent: a quarter of it, at least 50 ms (a lease's
    first query must reach the server in time), at most 5 s."""
    return min(max(timeout / 4, 0.05), 5.0)


class _Opened(NamedTuple):
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


class RetireConnection(Exception):
    """Raised by reset: this connection must be closed, not lent again."""


# -- secrets -------------------------------------------------------------------


class _Secrets:
    """The passwords in a connector's arguments, and how to keep them out of
    reprs, log records and exception messages."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add_from(self, dsn: str | None, connect_kwargs: dict[str, Any]) -> None:
        password = connect_kwargs.get("password")
        if isinstance(password, str):
            self._add(password)
        if dsn:
            for raw in _dsn_passwords(dsn):
                self._add(raw)
                self._add(unquote(raw))

    def _add(self, value: str) -> None:
        if value:
            self._values.add(value)

    def mask(self, text: str) -> str:
        # Longest first, so a password that contains another is fully masked.
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, "***")
        return text

    def leaks(self, exc: BaseException) -> bool:
        if not self._values:
            return False
        for link in _exception_chain(exc):
            text = f"{link!s} {link.args!r}"
            if any(value in text for value in self._values):
                return True
        return False

    def scrub(self, exc: BaseException) -> BaseException:
        """``exc`` itself if no password is in it or its chain, else a copy of
        the same type (where it can be built) with the password masked and
        without the chain."""
        if not self.leaks(exc):
            return exc
        message = self.mask(str(exc))
        try:
            clean = type(exc)(message)
        except Exception:
            clean = ConnectionError(message)
        if self.leaks(clean):  # pragma: no cover - a type that re-adds it
            clean = ConnectionError(f"{type(exc).__name__} (message withheld: it contained a password)")
        clean.__suppress_context__ = True
        return clean


def _dsn_passwords(dsn: str) -> list[str]:
    found: list[str] = []
    try:
        parts = urlsplit(dsn)
    except ValueError:
        parts = None
    netloc = parts.netloc if parts is not None else dsn
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    found.extend(m.group(1) for m in re.finditer(r"(?:^|[?&\s])password=([^&\s]*)", dsn))
    return found


def mask_dsn(dsn: str) -> str:
    """``dsn`` with any password shown as ``***``, safe to print or log.

    Handles URLs (``postgresql://user:secret@host/db``, ``?password=secret``)
    and libpq keyword strings (``host=h password=secret``).
    """
    if "://" in dsn:
        # Up to the last "@": a password with a stray "/" or "@" stays hidden.
        masked = re.sub(r"(://[^:/?#@\s]*:)\S*@", r"\1***@", dsn)
        return re.sub(r"([?&]password=)[^&#\s]*", r"\1***", masked, flags=re.IGNORECASE)
    return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn, flags=re.IGNORECASE)


def _masked_or_withheld(dsn: str) -> str:
    """``repr(mask_dsn(dsn))``, or a placeholder when some password field of
    ``dsn`` is spelled in a way masking does not reach."""
    masked = mask_dsn(dsn)
    if any(found != "***" for found in _dsn_passwords(masked)):
        return "(DSN withheld: its password could not be masked)"
    return repr(masked)


def _exception_chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ if link.__cause__ is not None else link.__context__


# -- the connector -------------------------------------------------------------


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
        "_overdue",
        "_pgbouncer",
        "_policy",
        "_reset_fn",
        "_reset_timeout",
        "_resetting",
        "_secrets",
        "_validate_timeout",
        "_watchdog",
        "_watchdog_loop",
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
        reset_timeout: float = _RESET_TIMEOUT,
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
        self._secrets = _Secrets()
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
        self._live: dict[int, _Opened] = {}
        self._generation = 0
        # Reset round trips in flight, by id(conn): the connection and when
        # its reset is overdue. One watchdog timer bounds them all.
        self._resetting: dict[int, tuple[Connection, float]] = {}
        self._overdue: set[int] = set()
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_loop: asyncio.AbstractEventLoop | None = None
        #: Connects whose caller gave up (see ``connect``), until they end.
        self._orphans: set[asyncio.Task[Connection]] = set()
        #: What ``init`` raised the last time it failed (``create_pool``
        #: raises it from opening at once instead of retrying).
        self.last_init_error: BaseException | None = None

    def __repr__(self) -> str:
        # The password field is masked, not the password's text: a password
        # that is also the user name must not mangle the rest of the DSN.
        if self._dsn is not None:
            target = _masked_or_withheld(self._dsn)
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
        unknown = set(connect_kwargs) - _CONNECT_PARAMETERS
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
        self._live[id(conn)] = _Opened(conn, generation, reset_query, timeouts, own_queries, watch)
        return conn

    async def _idle_timeouts(self, conn: Connection) -> IdleTimeouts:
        """The session's idle timeouts, read once (after ``init``, which may
        set them). Behind PgBouncer they are the server connections' business,
        not this client's: not read."""
        if self._pgbouncer:
            return IdleTimeouts(None, None)
        row: Any = await conn.fetchrow(_IDLE_TIMEOUTS_QUERY, timeout=self._reset_timeout)
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
        row: Any = await conn.fetchrow(_BASELINE_QUERY, timeout=self._reset_timeout)
        session_user, role, names, values = row
        # Settings first, as the login role: one only a superuser may set was
        # set by ``init`` before it dropped privileges, if it did. Then the
        # session user, which also resets the role; then the role.
        settings = "".join(
            f"SELECT set_config({_literal(n)}, {_literal(v)}, false);" for n, v in zip(names, values, strict=True)
        )
        identity = ""
        if login is None or session_user != login:
            identity += f"SET SESSION AUTHORIZATION {_identifier(session_user)};"
        if role != "none":
            identity += f"SET ROLE {_identifier(role)};"
        if not settings or not identity:
            return FULL_RESET_QUERY + settings + identity
        # Which identity may set them is not known: a superuser-only setting
        # made before ``init`` dropped privileges needs the login role, one
        # granted (``GRANT SET ON PARAMETER``) to the role ``init`` switched
        # to needs that role. Prove one order now, on the fresh connection
        # (a failed attempt rolls back whole), rather than have every
        # release fail and the connection replaced for every lease.
        last: BaseException | None = None
        for query in (FULL_RESET_QUERY + settings + identity, FULL_RESET_QUERY + identity + settings):
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
            await conn.execute(_PING, timeout=self._validate_timeout)
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
            _forget_listeners(conn)
            if _forget_transaction(conn):
                await self._run(conn, _ROLLBACK)
            elif interrupted:
                await self._run(conn, _PING)
        elif policy == "full":
            opened = self._live.get(id(conn))
            query = FULL_RESET_QUERY if opened is None else opened.reset_query
            if _forget_transaction(conn):
                query = f"{_ROLLBACK};{query}"
            _forget_listeners(conn)
            await self._run(conn, query)
        else:
            if _forget_transaction(conn):
                await self._run(conn, _ROLLBACK)
            _forget_listeners(conn)
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

    def terminate_all(self) -> None:
        """Drop every open connection this connector made, at once."""
        for opened in list(self._live.values()):
            terminate(opened.conn)

    # -- internals -----------------------------------------------------------

    async def _run(self, conn: Connection, query: str) -> None:
        """Run a reset query, bounded by ``reset_timeout``.

        The bound is the connector's watchdog, not asyncpg's ``timeout=``:
        that arms and cancels an event-loop timer on every query, which cost
        5-10 % of a pool's throughput at 10 tasks (measured against a bare
        queue running the same query, in the same process). A reset that
        overruns is ended by terminating its connection, between one and one
        and a half ``reset_timeout`` after it started.
        """
        key = id(conn)
        self._resetting[key] = (conn, time.monotonic() + self._reset_timeout)
        self._watch()
        try:
            await conn.execute(query)
        except BaseException as exc:
            # Failed or interrupted half-way: its state is unknown.
            terminate(conn)
            if key in self._overdue:
                raise RetireConnection(
                    f"reset did not finish within {self._reset_timeout} s; connection terminated"
                ) from exc
            raise
        finally:
            self._resetting.pop(key, None)
            self._overdue.discard(key)

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        if self._watchdog is None or self._watchdog_loop is not loop:
            # (A timer left on another, maybe closed, loop would never fire.)
            self._watchdog_loop = loop
            self._watchdog = loop.call_later(self._reset_timeout / 2, self._patrol)

    def _patrol(self) -> None:
        self._watchdog = None
        now = time.monotonic()
        for key, (conn, overdue_at) in list(self._resetting.items()):
            if overdue_at <= now:
                del self._resetting[key]
                self._overdue.add(key)
                logger.warning("a reset took longer than %s s; terminating its connection", self._reset_timeout)
                terminate(conn)
        if self._resetting:
            self._watch()

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


def _literal(value: str) -> str:
    """``value`` as an SQL string literal. The ``E''`` form escapes the same
    way whatever ``standard_conforming_strings`` says."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _forget_transaction(conn: Any) -> bool:
    """Forget asyncpg's view of an open transaction; ``True`` if the server
    has one that needs a ``ROLLBACK``."""
    if conn._top_xact is not None:
        # A Transaction object left unfinished: the next borrower's
        # ``conn.transaction()`` must start a new top-level transaction.
        conn._top_xact = None
    return bool(conn.is_in_transaction())


def _forget_listeners(conn: Any) -> None:
    # The callbacks of ``add_listener`` and ``add_log_listener`` belong to
    # the borrower that added them; the server side goes with ``UNLISTEN *``.
    listeners = conn._listeners
    if listeners:
        listeners.clear()
    log_listeners = conn._log_listeners
    if log_listeners:
        log_listeners.clear()


# -- the create_pool facade -----------------------------------------------------


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
            _Watched(connector, self),
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
        if self._foreign_loop():
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

    def _foreign_loop(self) -> bool:
        core = self._core
        if not core._opened:
            return False
        try:
            core._backend.check_loop()
        except PoolError:
            return True
        return False

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


@final
class _Watched:
    """The connector as :class:`Pool` hands it to its :class:`AsyncPool`:
    the same, except that while the pool is opening, a connect error that
    retrying cannot cure (or an error from ``init``) is reported to
    :meth:`Pool._open_core` at once."""

    __slots__ = (
        "_connector",
        "_pool",
        "background_reset",
        "close",
        "idle_limit",
        "is_closed",
        "reset",
        "validate",
        "watch",
    )

    def __init__(self, connector: AsyncpgConnector, pool: Pool) -> None:
        self._connector = connector
        self._pool = pool
        self.background_reset = connector.background_reset
        # Bound methods, so the hot paths pay no extra call.
        self.is_closed = connector.is_closed
        self.idle_limit = connector.idle_limit
        self.watch = connector.watch
        self.validate = connector.validate
        self.reset = connector.reset
        self.close = connector.close

    def __repr__(self) -> str:
        return repr(self._connector)

    async def connect(self) -> Connection:
        connector = self._connector
        try:
            return await connector.connect()
        except Exception as exc:
            # An error from ``init`` is the application's, as a bad password
            # is the configuration's: waiting will not cure either, and
            # asyncpg raises both from opening its pool at once.
            if isinstance(exc, _PERMANENT_CONNECT_ERRORS) or exc is connector.last_init_error:
                fatal = self._pool._fatal
                if fatal is not None and not fatal.done():
                    fatal.set_result(exc)
            raise


def _overrides_reset(connection_class: type[Connection]) -> bool:
    base: Any = asyncpg.Connection
    cls: Any = connection_class
    return bool(cls.reset is not base.reset or cls.get_reset_query is not base.get_reset_query)


async def _reset_by_connection_class(conn: Connection) -> None:
    """The reset of a ``connection_class`` that overrides ``reset()`` or
    ``get_reset_query()``, as asyncpg's pool runs it (after the connector's
    rollback, which leaves ``Connection.reset()`` no transaction to end)."""
    await conn.reset(timeout=_RESET_TIMEOUT)


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
    if init_size is None:
        init_size = min_size
    elif isinstance(init_size, bool) or not isinstance(init_size, int) or not min_size <= init_size <= max_size:
        bounds = f"from min_size ({min_size}) to max_size ({max_size})"
        raise ValueError(f"init_size must be an int {bounds}, got {init_size!r}")
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
        if connection_class is not None and _overrides_reset(connection_class):
            reset = _reset_by_connection_class
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
