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
transport and asyncpg's protocol and passes every event on unchanged; when a
chunk from the server holds a FATAL or PANIC ErrorResponse, it tells asyncpg
right away that the connection is lost, as the close would a moment later,
and drops the socket. From then on the connection is closed for everyone:
the pool never lends it, and the next operation on it fails before anything
is sent, with :class:`SessionEndedError` carrying the server's own reason.

Finding the message costs no parsing on the common path. Every response ends
with ReadyForQuery (``Z``, length 5, a status byte), so a chunk that ends with
one leaves the stream at a message boundary; only the bytes after such a
boundary (the next chunks, or what follows the last ReadyForQuery in the last
few KiB of a chunk, which may straddle reads) are read as messages, and only
as long as they are messages a server sends between queries (ErrorResponse,
NoticeResponse, ParameterStatus, NotificationResponse). A server's goodbye is
the last thing it sends, so a FATAL error counts only where the bytes received
so far end; one followed by more bytes was something else (a value in a
result that happens to look like one). A FATAL error that arrives as the
answer to a query is ended the same way, which is what its close would do.

One case is left, and only data a client fetches can make it: a result value
holding the bytes of a ReadyForQuery and then of a FATAL error, fetched so
that a read of the socket ends exactly after them, is taken for the session's
end, and that fetch fails with ``ConnectionDoesNotExistError``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import asyncpg.exceptions

if TYPE_CHECKING:
    from typing import TypeAlias

    Connection: TypeAlias = asyncpg.Connection[Any]

__all__ = ["SessionEndedError", "SessionWatch", "failed_before_sending", "session_aware"]

logger = logging.getLogger("asyncpool.asyncpg")

_READY = b"Z\x00\x00\x00\x05"
#: Message types a server sends outside a query's response.
_UNSOLICITED = frozenset(b"ENSA")
_ERROR = ord("E")
#: How far back from a chunk's end a ReadyForQuery is looked for: what
#: follows it in the same chunk is a server's goodbye, a few hundred bytes.
_TAIL = 4096
#: A message between queries longer than this is not taken for one.
_MAX_MESSAGE = 1 << 20


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


def _fields(data: bytes, start: int, end: int) -> dict[str, str] | None:
    """The fields of an ErrorResponse body ``data[start:end]``, or ``None``
    if it is not well formed (then it was not a message boundary at all)."""
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


class SessionWatch(asyncio.Protocol):
    """Sits between a connection's transport and asyncpg's protocol; see the
    module docstring. ``ended`` holds the server's FATAL error fields once it
    ended the session."""

    __slots__ = ("_at_boundary", "_held", "_inner", "_inner_lost", "_transport", "ended", "on_end")

    def __init__(self, inner: Any, transport: asyncio.Transport) -> None:
        self._inner = inner
        self._transport = transport
        #: Since the last response ended, only messages a server sends
        #: between queries have come (or nothing): ``_held`` starts at a
        #: message boundary.
        self._at_boundary = True
        #: At a boundary: an unsolicited message whose end has not come yet.
        #: Inside a response: its last few bytes, for a ReadyForQuery split
        #: across reads.
        self._held = b""
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
        watch = cls(raw._protocol, transport)
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
        if self.ended is not None:
            return
        size = len(data)
        if size >= 6 and data.find(_READY, size - 6) == size - 6:
            # The common case: a response ended, at a message boundary.
            self._at_boundary = True
            self._held = b""
            return
        if self._at_boundary:
            # Messages since the last boundary (an unsolicited one may come
            # in pieces): read them as such, unless they are a response.
            held = self._held + data if self._held else data
            if self._scan(held):
                return
            self._held = b""
        # Inside a response: its end is the last ReadyForQuery, which may
        # straddle reads (the last few bytes are kept for that); what
        # follows it came after the response.
        held = self._held + data if self._held else data
        ready = held.rfind(_READY, max(0, len(held) - _TAIL))
        if ready >= 0 and ready + 6 <= len(held):
            self._at_boundary = True
            after = held[ready + 6 :]
            self._held = b""
            if after and not self._scan(after):
                self._held = held[-5:]
        else:
            self._held = held[-5:]

    def eof_received(self) -> bool | None:
        eof_received = getattr(self._inner, "eof_received", None)
        return eof_received() if eof_received is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner_lost:
            return
        self._inner_lost = True
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

    # -- reading what came between queries ---------------------------------

    def _scan(self, data: bytes) -> bool:
        """Read ``data``, which starts at a message boundary, as messages a
        server sends between queries. ``True`` if it is all such messages
        (the last maybe incomplete, then kept for the next read) or it held
        the session's end; ``False`` if it is not (a query's response, which
        asyncpg reads itself), and the boundary is lost."""
        size = len(data)
        pos = 0
        while pos < size:
            kind = data[pos]
            if kind not in _UNSOLICITED:
                break
            if size - pos < 5:
                self._held = data[pos:]
                return True
            length = int.from_bytes(data[pos + 1 : pos + 5], "big")
            if not 4 <= length <= _MAX_MESSAGE:
                break  # not a message after all
            end = pos + 1 + length
            if end > size:
                self._held = data[pos:]
                return True
            if kind == _ERROR:
                fields = _fields(data, pos + 5, end)
                if fields is None:
                    break
                if fields.get("V", fields.get("S")) in ("FATAL", "PANIC"):
                    if end < size:
                        break  # a server's last words are the last bytes it sends
                    self._end(fields)
                    return True
            pos = end
        else:
            self._held = b""
            return True
        self._at_boundary = False
        return False

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
    after the session ended; same name, same behaviour otherwise."""
    if issubclass(connection_class, _SessionAware):
        return connection_class
    aware = _AWARE.get(connection_class)
    if aware is None:
        aware = type(
            connection_class.__name__,
            (_SessionAware, connection_class),
            {
                "__module__": connection_class.__module__,
                "__qualname__": connection_class.__qualname__,
                "__slots__": ("_session_watch",),
            },
        )
        _AWARE[connection_class] = aware
    return aware


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
