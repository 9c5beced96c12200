"""Pooling trio TCP streams with asyncpool, against a server that hangs up.

``AsyncPool`` runs unchanged under trio: this example pools
:class:`trio.SocketStream` objects made by ``trio.open_tcp_stream`` and talks
a tiny newline-delimited protocol over them. It has three parts:

* :class:`TcpStreamConnector`, the :class:`asyncpool.Connector` that makes,
  checks, cleans and closes the streams. Validation is a cheap
  ``PING``/``PONG`` round trip; reset refuses (and so retires) any stream
  that broke during its last use or has unread bytes or an end-of-file
  waiting.
* :func:`serve`, a line server for it to talk to: it answers ``PING`` with
  ``PONG``, echoes every other line upper-cased, and after a reply hangs up
  at random with a given probability, as a server restarting, a load
  balancer or a NAT timeout would.
* :func:`run_demo`, which starts the server on a free loopback port and has
  many tasks send requests through a small pool. A request that lands on a
  stream the server has already hung up on fails with
  :class:`ConnectionDropped`; the pool retires that stream and connects a
  new one, and the request is retried on another stream.

Run it with::

    python examples/trio_tcp_pool.py                   # 50 tasks x 20 requests, pool of 5
    python examples/trio_tcp_pool.py --drop 0.5 --clients 200

It prints how many requests succeeded, how many landed on dropped streams,
how many streams the pool created and destroyed, and the most streams the
pool held at once, which never exceeds its ``max_size``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import NoReturn

import trio

from asyncpool import AsyncPool, Connector

__all__ = [
    "LOOPBACK",
    "Client",
    "ConnectionDropped",
    "DemoResult",
    "LineReader",
    "PoolWatch",
    "ServerStats",
    "StreamNotClean",
    "TcpStreamConnector",
    "main",
    "run_demo",
    "serve",
    "start_server",
]

LOOPBACK = "127.0.0.1"
#: Longest line either side accepts, newline excluded.
MAX_LINE = 64 * 1024


class ConnectionDropped(Exception):
    """Raised when a stream breaks mid-request: the peer hung up or reset it."""


class StreamNotClean(Exception):
    """Raised by ``reset`` for a stream that must not be lent again."""


# -- reading lines -------------------------------------------------------------


class LineReader:
    """Reads ``\\n``-terminated lines from a trio stream.

    trio streams deliver bytes in chunks of whatever size the network
    produced, so a line may arrive in several pieces and one chunk may hold
    the start of the next line. The reader keeps what follows a newline in
    its buffer for the next call. It changes the buffer only after a receive
    has returned, so a cancelled ``readline`` loses nothing.
    """

    __slots__ = ("_buffer", "_chunk_size", "_max_line", "_scanned", "_stream")

    def __init__(self, stream: trio.abc.ReceiveStream, *, max_line: int = MAX_LINE, chunk_size: int = 4096) -> None:
        self._stream = stream
        self._max_line = max_line
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        # How much of the buffer is known to hold no newline, so that a long
        # line arriving in many chunks is not scanned from its start each time.
        self._scanned = 0

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as part of a line."""
        return len(self._buffer)

    async def readline(self) -> bytes:
        """Return the next line, without its ``\\n``.

        Raises ``EOFError`` if the stream ends before a full line, and
        ``ValueError`` if a line exceeds ``max_line`` bytes. Errors of the
        stream itself (``trio.BrokenResourceError``, …) pass through.
        """
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                self._scanned = 0
                return line
            if len(buffer) > self._max_line:
                raise ValueError(f"line longer than {self._max_line} bytes")
            self._scanned = len(buffer)
            chunk = await self._stream.receive_some(self._chunk_size)
            if not chunk:
                raise EOFError("the stream ended mid-line" if buffer else "the stream ended")
            buffer += chunk


# -- the connector ---------------------------------------------------------------


class TcpStreamConnector(Connector[trio.SocketStream]):
    """Makes, checks, cleans and closes TCP streams to one line server.

    ``request`` sends a line and returns the reply line. Every stream
    ``connect`` returns must eventually be passed to ``close`` (the pool does
    that), which forgets the stream's read buffer.

    The connector counts what it did: ``opened`` and ``closed`` streams, and
    ``peak_open``, the most streams open at the same time.
    """

    def __init__(self, host: str, port: int, *, ping_timeout: float = 1.0) -> None:
        self.host = host
        self.port = port
        self.ping_timeout = ping_timeout
        self.opened = 0
        self.closed = 0
        self.peak_open = 0
        self._readers: dict[trio.SocketStream, LineReader] = {}
        # Streams that failed, or were interrupted, in the middle of a
        # request: whatever they still hold (a late reply, an error) would be
        # read by the next borrower, so they are never lent again.
        self._broken: set[trio.SocketStream] = set()

    def __repr__(self) -> str:
        return f"<TcpStreamConnector {self.host}:{self.port} open={self.opened - self.closed}>"

    async def connect(self) -> trio.SocketStream:
        stream = await trio.open_tcp_stream(self.host, self.port)
        self._readers[stream] = LineReader(stream)
        self.opened += 1
        self.peak_open = max(self.peak_open, self.opened - self.closed)
        return stream

    def is_closed(self, stream: trio.SocketStream) -> bool:
        """Known dead without any I/O: broken mid-request, or closed here.

        The pool asks this before lending an idle stream. It cannot see a
        hang-up by the server; ``validate`` and ``reset`` catch those.
        """
        return stream in self._broken or stream.socket.fileno() == -1

    async def validate(self, stream: trio.SocketStream) -> bool:
        """One ``PING``/``PONG`` round trip, bounded by ``ping_timeout``."""
        if self.is_closed(stream) or self._readers[stream].pending:
            return False
        with trio.move_on_after(self.ping_timeout):
            try:
                reply = await self._exchange(stream, b"PING")
            except Exception:
                return False
            return reply == b"PONG"
        # The ping timed out; ``_exchange`` marked the stream broken, as a
        # late PONG would otherwise be read as the next request's reply.
        return False

    async def reset(self, stream: trio.SocketStream) -> None:
        """Refuse a stream that is not quiet; there is nothing else to clean.

        In a request/reply protocol a stream between requests has nothing to
        read. Buffered bytes, or a socket that is readable (stray bytes, or
        the end-of-file of a server that hung up after its reply), mean the
        next borrower would read the wrong thing or nothing. Raising makes
        the pool close the stream and connect a replacement.
        """
        if stream in self._broken:
            raise StreamNotClean("the stream broke during its last request")
        if self._readers[stream].pending or stream.socket.is_readable():
            raise StreamNotClean("the stream has unread bytes or the server hung up")

    async def close(self, stream: trio.SocketStream) -> None:
        # The bookkeeping comes first, before the only await, so that a
        # cancelled close still forgets the stream.
        self._readers.pop(stream, None)
        self._broken.discard(stream)
        self.closed += 1
        with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()

    async def request(self, stream: trio.SocketStream, line: str) -> str:
        """Send ``line``, return the server's reply line.

        Raises :class:`ConnectionDropped` if the stream breaks on the way;
        the stream is then marked broken, so releasing it retires it.
        """
        data = line.encode()
        if b"\n" in data:
            raise ValueError("a request is a single line")
        return (await self._exchange(stream, data)).decode()

    async def _exchange(self, stream: trio.SocketStream, data: bytes) -> bytes:
        reader = self._readers[stream]
        try:
            await stream.send_all(data + b"\n")
            return await reader.readline()
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._broken.add(stream)
            raise ConnectionDropped(f"{self.host}:{self.port}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            # Cancelled, timed out or a protocol error half-way through: the
            # reply may still arrive, so the stream is done for.
            self._broken.add(stream)
            raise


# -- the server ----------------------------------------------------------------------


@dataclass(slots=True)
class ServerStats:
    """What the line server did."""

    connections: int = 0
    replies: int = 0
    #: Connections closed at random after a reply.
    dropped: int = 0
    #: Connections closed because no line arrived within ``idle_timeout``.
    idle_closed: int = 0


async def serve(
    port: int,
    drop_probability: float = 0.0,
    *,
    host: str = LOOPBACK,
    idle_timeout: float | None = None,
    seed: int | None = None,
    stats: ServerStats | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the line protocol on ``host:port`` until cancelled.

    ``PING`` is answered with ``PONG``; any other line comes back
    upper-cased. After each reply the connection is closed with probability
    ``drop_probability``, and a connection that sends nothing for
    ``idle_timeout`` seconds is closed too. ``port=0`` picks a free port;
    under ``nursery.start`` the listeners are reported back, so the caller
    can read it (see :func:`start_server`).
    """
    rng = random.Random(seed)
    counts = ServerStats() if stats is None else stats
    idle = math.inf if idle_timeout is None else idle_timeout

    async def handle(stream: trio.SocketStream) -> None:
        # ``serve_tcp`` closes the stream once this returns.
        counts.connections += 1
        reader = LineReader(stream)
        try:
            while True:
                line: bytes | None = None
                with trio.move_on_after(idle):
                    line = await reader.readline()
                if line is None:
                    counts.idle_closed += 1
                    return
                reply = b"PONG" if line == b"PING" else line.upper()
                await stream.send_all(reply + b"\n")
                counts.replies += 1
                if rng.random() < drop_probability:
                    counts.dropped += 1
                    return
        except (EOFError, ValueError, trio.BrokenResourceError, trio.ClosedResourceError):
            # The client went away or misbehaved: end this connection only.
            # Anything escaping a handler would bring the whole server down.
            return

    await trio.serve_tcp(handle, port, host=host, task_status=task_status)


async def start_server(
    nursery: trio.Nursery,
    drop_probability: float = 0.0,
    *,
    idle_timeout: float | None = None,
    seed: int | None = None,
    stats: ServerStats | None = None,
) -> int:
    """Start :func:`serve` on a free loopback port in ``nursery``; return the port."""
    listeners: list[trio.SocketListener] = await nursery.start(
        partial(serve, 0, drop_probability, host=LOOPBACK, idle_timeout=idle_timeout, seed=seed, stats=stats)
    )
    port: int = listeners[0].socket.getsockname()[1]
    return port


# -- the client ----------------------------------------------------------------------


class Client:
    """Sends requests through a pool, retrying the ones that hit a dropped stream.

    A request whose stream breaks raises :class:`ConnectionDropped` out of
    the ``async with`` block. Leaving the block with an exception makes the
    pool check the stream before keeping it; the connector's ``reset``
    refuses a broken stream, so the pool closes it and connects a
    replacement. The retry happens outside the block, on whichever stream the
    pool lends next. A dropped request never reached the server's handler
    (the server only hangs up after a reply), so retrying it is safe.
    """

    def __init__(
        self, pool: AsyncPool[trio.SocketStream], connector: TcpStreamConnector, *, max_attempts: int = 10
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}")
        self.pool = pool
        self.connector = connector
        self.max_attempts = max_attempts
        #: Requests answered.
        self.ok = 0
        #: Attempts that landed on a stream the server had dropped.
        self.drops = 0

    async def call(self, line: str) -> str:
        """Send ``line`` and return the reply, retrying on dropped streams.

        Raises :class:`ConnectionDropped` after ``max_attempts`` drops in a
        row, and the pool's errors (``PoolTimeout``, …) as they come.
        """
        attempt = 1
        while True:
            try:
                async with self.pool.acquire() as stream:
                    reply = await self.connector.request(stream, line)
            except ConnectionDropped:
                self.drops += 1
                if attempt >= self.max_attempts:
                    raise
                attempt += 1
            else:
                self.ok += 1
                return reply


class PoolWatch:
    """Samples a pool's size and checks its accounting while it runs."""

    def __init__(self, pool: AsyncPool[trio.SocketStream]) -> None:
        self.pool = pool
        #: The largest ``stats().size`` seen.
        self.peak_size = 0
        self.samples = 0

    def sample(self) -> None:
        stats = self.pool.stats()
        if not stats.in_use + stats.idle <= stats.size <= stats.max_size:
            raise AssertionError(f"pool accounting broken: {stats}")
        self.peak_size = max(self.peak_size, stats.size)
        self.samples += 1

    async def run(self, interval: float = 0.0) -> NoReturn:
        """Sample every ``interval`` seconds (``0``: every scheduler pass) until cancelled."""
        while True:
            self.sample()
            await trio.sleep(interval)


# -- the demo ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What one run of :func:`run_demo` saw."""

    requests: int
    ok: int
    drops: int
    created: int
    destroyed: int
    health_failures: int
    peak_size: int
    max_size: int
    peak_open: int
    server: ServerStats
    seconds: float


async def run_demo(
    *,
    clients: int = 50,
    requests_per_client: int = 20,
    max_size: int = 5,
    drop_probability: float = 0.2,
    seed: int | None = None,
) -> DemoResult:
    """Start the server, run ``clients`` tasks through one pool, close it all."""
    server = ServerStats()
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, drop_probability, seed=seed, stats=server)
        connector = TcpStreamConnector(LOOPBACK, port)
        pool = AsyncPool(connector, max_size=max_size, timeout=30.0, name="trio-tcp")
        client = Client(pool, connector)
        watch = PoolWatch(pool)

        async def worker(n: int) -> None:
            for i in range(requests_per_client):
                line = f"task {n} request {i}"
                reply = await client.call(line)
                if reply != line.upper():
                    raise AssertionError(f"sent {line!r}, got {reply!r}")
                watch.sample()

        async with pool, trio.open_nursery() as watcher:
            watcher.start_soon(watch.run, 0.001)
            async with trio.open_nursery() as workers:
                for n in range(clients):
                    workers.start_soon(worker, n)
            watcher.cancel_scope.cancel()
        # The pool is closed: every stream it made has been closed.
        nursery.cancel_scope.cancel()
    stats = pool.stats()
    return DemoResult(
        requests=clients * requests_per_client,
        ok=client.ok,
        drops=client.drops,
        created=stats.created,
        destroyed=stats.destroyed,
        health_failures=stats.health_failures,
        peak_size=watch.peak_size,
        max_size=max_size,
        peak_open=connector.peak_open,
        server=server,
        seconds=trio.current_time() - started,
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=50, help="concurrent tasks (default 50)")
    parser.add_argument("--requests", type=int, default=20, help="requests per task (default 20)")
    parser.add_argument("--pool-size", type=int, default=5, help="the pool's max_size (default 5)")
    parser.add_argument(
        "--drop", type=float, default=0.2, help="chance the server hangs up after a reply (default 0.2)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the server's hang-ups")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    result = trio.run(
        partial(
            run_demo,
            clients=args.clients,
            requests_per_client=args.requests,
            max_size=args.pool_size,
            drop_probability=args.drop,
            seed=args.seed,
        )
    )
    server = result.server
    print(
        f"{args.clients} tasks x {args.requests} requests through a pool of {result.max_size} trio TCP streams; "
        f"the server hangs up after {args.drop:.0%} of its replies"
    )
    print(f"  requests ok              {result.ok:6d} / {result.requests}")
    print(f"  drops seen               {result.drops:6d}   (attempts on a stream the server had closed; retried)")
    print(f"  streams created          {result.created:6d}")
    print(f"  streams destroyed        {result.destroyed:6d}   ({result.health_failures} found dead by validation)")
    print(f"  most streams at once     {result.peak_size:6d}   (max_size {result.max_size})")
    print(f"  most sockets open        {result.peak_open:6d}")
    print(
        f"  server                   {server.connections:6d} connections, {server.replies} replies, "
        f"{server.dropped} hung up"
    )
    print(f"  elapsed                  {result.seconds:6.2f} s")
    healthy = result.ok == result.requests and result.peak_size <= result.max_size
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
