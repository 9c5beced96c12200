"""When the server ends a session: see it at once, and say so truthfully.

A server that ends a session (``pg_terminate_backend``, ``idle_session_timeout``,
``idle_in_transaction_session_timeout``, a shutdown) sends an ErrorResponse of
severity FATAL and only then closes the socket. asyncpg, receiving that error
while no query runs, cannot place it: it puts its protocol in an error state
and fails the next operation with ``InternalClientError`` ("cannot switch to
state 12; another operation (2) is in progress"), while ``is_closed()`` still
says ``False``, until the close arrives. Nothing of this is visible from
Python: the protocol's state is private to its Cython class.

What is visible is the wire. :class:`SessionWatch` sits between the
transport and asyncpg's protocol and passes every event on unchanged; when the
bytes from the server end with a FATAL or PANIC ErrorResponse, it tells
asyncpg right away that the connection is lost, as the close would a moment
later, and drops the socket. From then on the connection is closed for
everyone: the pool never lends it, and the next operation on it fails before
anything is sent, with :class:`SessionEndedError` carrying the server's own
reason.

A server's goodbye is the last thing it sends, so that is where it is looked
for: at the end of what has arrived (the last few KiB are kept, for a goodbye
that comes in pieces), whatever came before it (the end of a response, the
answer to a statement's preparation, which ends without a ReadyForQuery, or
nothing). A chunk that ends a response with ReadyForQuery, the common case,
costs one comparison; others, a search of their last bytes for the
non-localized severity field. A FATAL error that answers a query is ended the
same way, which is what its close would do.

One case is left, and only data a client fetches can make it: a result value
holding the bytes of a whole FATAL ErrorResponse, fetched so that a read of
the socket ends exactly after them, is taken for the session's end, and that
fetch fails with ``ConnectionDoesNotExistError``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import asyncpg.exceptions

from ._prepared import SeesSqlPrepare

if TYPE_CHECKING:
    from typing import TypeAlias

    Connection: TypeAlias = asyncpg.Connection[Any]

__all__ = [
    "SessionEndedError",
    "SessionWatch",
    "failed_before_sending",
    "let_cancel_requests_end",
    "session_aware",
    "terminate",
]

logger = logging.getLogger("asyncpool.asyncpg")

_READY = b"Z\x00\x00\x00\x05"
#: The non-localized severity field (PostgreSQL 9.6 and later) of a
#: message that ends the session.
_FATAL = b"VFATAL\x00"
_PANIC = b"VPANIC\x00"
_ERROR = b"E"
#: How much of the end of the stream is kept and searched: a server's
#: goodbye is a few hundred bytes.
_TAIL = 4096


class SessionEndedError(asyncpg.exceptions.ConnectionDoesNotExistError):
    """Raised by an operation on a connection whose session the server ended.

    It is asyncpg's ``ConnectionDoesNotExistError``, so code that handles a
    lost connection handles it too. ``server_error`` is the server's FATAL
    error as asyncpg's exception (``AdminShutdownError`` for a terminated
    backend, ``IdleSessionTimeoutError``, ...), also chained as the cause;
    ``query_sent`` is ``False``: nothing of the failed operation reached the
    server, so running it again on another connection is safe.
    """

    server_error: asyncpg.PostgresError | None = None
    query_sent: bool = False


def _server_error(fields: dict[str, str]) -> asyncpg.PostgresError:
    error: asyncpg.PostgresError = asyncpg.exceptions.PostgresError.new(fields)
    return error


def session_ended_error(fields: dict[str, str]) -> SessionEndedError:
    """The error for an operation attempted after the session ended."""
    server = _server_error(fields)
    exc = SessionEndedError(f"the server ended the session: {server.args[0] if server.args else server}")
    exc.server_error = server
    exc.query_sent = False
    exc.__cause__ = server
    return exc


def _fields(data: bytes | bytearray, start: int, end: int) -> dict[str, str] | None:
    """The fields of an ErrorResponse body ``data[start:end]``, or ``None``
    if it is not well formed (then it was not a message at all)."""
    fields: dict[str, str] = {}
    pos = start
    while pos < end:
        kind = data[pos]
        if kind == 0:
            return fields if pos == end - 1 else None
        stop = data.find(b"\x00", pos + 1, end)
        if stop < 0:
            return None
        fields[chr(kind)] = data[pos + 1 : stop].decode("utf-8", "replace")
        pos = stop + 1
    return None


def _goodbye_at_end(data: bytes | bytearray, low: int) -> dict[str, str] | None:
    """The fields of a FATAL or PANIC ErrorResponse that ends exactly where
    ``data`` ends (starting at or after ``low``), or ``None``."""
    end = len(data)
    pos = data.rfind(_ERROR, low, end - 7)
    while pos >= 0:
        if int.from_bytes(data[pos + 1 : pos + 5], "big") == end - pos - 1:
            fields = _fields(data, pos + 5, end)
            if fields is not None and fields.get("V") in ("FATAL", "PANIC") and "C" in fields:
                return fields
        pos = data.rfind(_ERROR, low, pos)
    return None


class SessionWatch(asyncio.Protocol):
    """Sits between a connection's transport and asyncpg's protocol; see the
    module docstring. ``ended`` holds the server's FATAL error fields once it
    ended the session."""

    __slots__ = ("_conn", "_held", "_inner", "_inner_lost", "_transport", "ended", "on_end")

    def __init__(self, conn: Connection, inner: Any, transport: asyncio.Transport) -> None:
        self._conn = weakref.ref(conn)
        self._inner = inner
        self._transport = transport
        #: The last bytes received, unless they ended a response: a goodbye
        #: may arrive in pieces.
        self._held = bytearray()
        self._inner_lost = False
        self.ended: dict[str, str] | None = None
        #: Called once, from the loop, when the connection ends in any way
        #: (the pool's ``Connector.watch``).
        self.on_end: Callable[[], None] | None = None

    @classmethod
    def install(cls, conn: Connection) -> SessionWatch | None:
        """Put a watch on ``conn``'s transport (right after it connected,
        while no query runs); ``None`` where the transport cannot take one."""
        raw: Any = conn
        transport = raw._transport
        watch = cls(conn, raw._protocol, transport)
        try:
            transport.set_protocol(watch)
        except (AttributeError, NotImplementedError):
            return None
        if isinstance(conn, _SessionAware):
            # Kept on the connection: a closed transport forgets its protocol.
            raw._session_watch = watch
        return watch

    @staticmethod
    def of(conn: Connection) -> SessionWatch | None:
        watch: SessionWatch | None = getattr(conn, "_session_watch", None)
        return watch

    # -- the transport's events, passed on ---------------------------------

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)
        if data.endswith(_READY, 0, -1):
            # The common case: a response ended; no goodbye follows it here.
            if self._held:
                self._held = bytearray()
            return
        if self.ended is None:
            self._look(data)

    def _look(self, data: bytes) -> None:
        """Does what has arrived end with the server's goodbye?"""
        if len(data) >= _TAIL:
            window: bytes | bytearray = data
            self._held = bytearray(data[-_TAIL:])
        else:
            held = self._held
            held += data
            if len(held) > 2 * _TAIL:
                del held[:-_TAIL]
            window = held
        if window.endswith(b"\x00\x00"):
            # Every ErrorResponse ends with two zero bytes; look closer only
            # where the severity field of a goodbye is there too.
            low = max(0, len(window) - _TAIL)
            if window.find(_FATAL, low) >= 0 or window.find(_PANIC, low) >= 0:
                fields = _goodbye_at_end(window, low)
                if fields is not None:
                    self._end(fields)

    def eof_received(self) -> bool | None:
        eof_received = getattr(self._inner, "eof_received", None)
        return eof_received() if eof_received is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner_lost:
            return
        self._inner_lost = True
        conn = self._conn()
        if conn is not None:
            let_cancel_requests_end(conn)  # asyncpg's teardown would cut them off
        self._inner.connection_lost(exc)
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            try:
                on_end()
            except Exception:
                logger.exception("a connection's end could not be reported to its pool")

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _end(self, fields: dict[str, str]) -> None:
        """The server ended the session: tell asyncpg the connection is lost
        now, rather than when the close arrives, and drop the socket."""
        self.ended = fields
        self._transport.abort()
        self.connection_lost(None)


class _SessionAware:
    """Mixed into the connection class: an operation on a connection whose
    session the server ended raises :class:`SessionEndedError` with the
    server's reason, where asyncpg says only "connection is closed"."""

    __slots__ = ()

    def _check_open(self) -> None:
        conn: Any = self
        if conn.is_closed():
            watch = SessionWatch.of(conn)
            if watch is not None and watch.ended is not None:
                raise session_ended_error(watch.ended)
            raise asyncpg.InterfaceError("connection is closed")


_AWARE: dict[type[Any], type[Any]] = {}


def session_aware(connection_class: type[Connection]) -> type[Connection]:
    """``connection_class`` with :class:`SessionEndedError` on operations
    after the session ended, and noting SQL ``PREPARE`` (``_prepared``);
    same name, same behaviour otherwise."""
    if issubclass(connection_class, _SessionAware):
        return connection_class
    aware = _AWARE.get(connection_class)
    if aware is None:
        aware = type(
            connection_class.__name__,
            (_SessionAware, SeesSqlPrepare, connection_class),
            {
                "__module__": connection_class.__module__,
                "__qualname__": connection_class.__qualname__,
                "__slots__": ("_session_watch", "_sql_prepare_seen"),
            },
        )
        _AWARE[connection_class] = aware
    return aware


def terminate(conn: Connection) -> None:
    """``conn.terminate()``, letting asyncpg's cancel requests in flight end.

    When a query's task is cancelled, asyncpg sends a cancel request over a
    connection of its own (negotiating SSL first, as for any connect). At
    the connection's teardown it cancels those requests, cut off half-way
    through their connect, which leaves a future whose exception nobody
    retrieves. Detached here, they end on their own: the connect completes
    or fails, the request is sent or not, in a moment.
    """
    let_cancel_requests_end(conn)
    conn.terminate()


def let_cancel_requests_end(conn: Connection) -> None:
    """Keep asyncpg's teardown of ``conn`` from cutting off its cancel
    requests in flight (see :func:`terminate`)."""
    raw: Any = conn
    if raw._cancellations:
        raw._cancellations = set()


def failed_before_sending(exc: BaseException) -> bool:
    """Did ``exc`` end an operation before any of it reached the server, or
    did the server end the session without reading it? Then the operation
    may run again on another connection."""
    if isinstance(exc, SessionEndedError):
        return not exc.query_sent
    if isinstance(exc, asyncpg.InternalClientError):
        # asyncpg switches its protocol's state before it writes a byte.
        return str(exc).startswith("cannot switch to state")
    if isinstance(exc, asyncpg.InterfaceError):
        return str(exc) in ("connection is closed", "cannot perform operation: connection is closed")
    idle_timeout = getattr(asyncpg.exceptions, "IdleSessionTimeoutError", None)
    # A session ended for being idle was not running anything: the query
    # that met the goodbye was never read.
    return (
        isinstance(exc, asyncpg.ConnectionDoesNotExistError)
        and idle_timeout is not None
        and isinstance(exc.__cause__, idle_timeout)
    )
