"""A TCP proxy that injects network faults, for tests and the soak.

It sits between a client (a pool) and a server (PostgreSQL, or a test
server) on loopback and forwards bytes both ways until told otherwise:

- ``cut()``: reset every open link now (the client sees the connection
  reset, as when a middlebox or the server's host drops it);
- ``stall()``: forward nothing either way while the sockets stay open (the
  half-open case: a client waiting for an answer hears nothing at all);
- ``set_latency()``: delay every chunk, both ways, keeping their order;
- ``refuse()``: stop listening, so new connects are refused, while the links
  already open go on;
- ``hold_eof()``: when the server hangs up, pass on what it sent last but
  not the hang-up itself, until released (what a client sees between a
  server's goodbye message and the end of the stream, made as long as a
  test needs);
- ``fragment()``: pass the server's bytes on in small pieces, a
  millisecond apart, so the client reads a message in several parts.

The proxy runs its own asyncio loop in a thread of its own, so it serves a
client on any event loop (asyncio, uvloop, trio) and keeps running while the
client's loop is busy. Every control call is synchronous: it returns once the
fault is in effect. A proxy stops by itself after ``lifetime`` seconds, so a
test that forgets it leaves nothing running for long.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["FaultProxy"]

T = TypeVar("T")

#: SO_LINGER on, zero seconds: close() sends a reset instead of a FIN.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class _Pipe:
    """One direction of a link: delays and splits chunks, in order."""

    __slots__ = ("_draining", "_last_due", "_loop", "_proxy", "_queue", "_timer", "closed", "sink")

    def __init__(self, proxy: FaultProxy, loop: asyncio.AbstractEventLoop) -> None:
        self._proxy = proxy
        self._loop = loop
        self.sink: asyncio.Transport | None = None
        self._queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._last_due = 0.0
        self._draining = False
        self.closed = False

    def push(self, data: bytes, pieces: int | None) -> None:
        now = self._loop.time()
        due = max(now + self._proxy._latency, self._last_due)
        if pieces:
            for start in range(0, len(data), pieces):
                self._queue.append((due, data[start : start + pieces]))
                due += 0.001
        else:
            self._queue.append((due, data))
        self._last_due = due
        self._drain()

    def push_eof(self) -> None:
        self._queue.append((max(self._loop.time() + self._proxy._latency, self._last_due), None))
        self._drain()

    def _drain(self) -> None:
        # Until its sink exists (the server side is still connecting), what
        # arrives waits here, in order.
        if self._timer is not None or self._draining or self.closed or self.sink is None:
            return
        self._draining = True
        try:
            while self._queue:
                if self._proxy._stalled:
                    return  # resume() drains again
                due, data = self._queue[0]
                wait = due - self._loop.time()
                if wait > 0:
                    self._timer = self._loop.call_later(wait, self._wake)
                    return
                if data is None and self._proxy._holding_eof:
                    return  # release_eof() drains again
                self._queue.popleft()
                if self.sink.is_closing():
                    continue
                if data is None:
                    self.sink.close()
                else:
                    self.sink.write(data)
        finally:
            self._draining = False

    def _wake(self) -> None:
        self._timer = None
        self._drain()

    def stop(self) -> None:
        self.closed = True
        self._queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Side(asyncio.Protocol):
    """One socket of a link: what it receives goes into ``outbound``; it is
    the sink of ``inbound``, the pipe from the other socket."""

    def __init__(self, link: _Link, outbound: _Pipe, inbound: _Pipe, to_client: bool) -> None:
        self._link = link
        self._outbound = outbound
        self._inbound = inbound
        self._to_client = to_client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._inbound.sink = transport
        self._inbound._drain()

    def data_received(self, data: bytes) -> None:
        proxy = self._link.proxy
        pieces = proxy._fragment if self._to_client else None
        proxy.bytes_forwarded += len(data)
        self._outbound.push(data, pieces)

    def eof_received(self) -> bool:
        self._outbound.push_eof()
        return True  # keep our own writing side open until the pipe closes it

    def connection_lost(self, exc: Exception | None) -> None:
        self._outbound.push_eof()
        self._link.side_lost()


class _Link:
    """A client connection and the server connection made for it."""

    def __init__(self, proxy: FaultProxy, loop: asyncio.AbstractEventLoop) -> None:
        self.proxy = proxy
        self.to_server = _Pipe(proxy, loop)
        self.to_client = _Pipe(proxy, loop)
        self.client: _Side | None = None
        self.server: _Side | None = None
        self._lost = 0

    def transports(self) -> list[asyncio.Transport]:
        return [s.transport for s in (self.client, self.server) if s is not None and s.transport is not None]

    def side_lost(self) -> None:
        self._lost += 1
        if self._lost == 2:
            self.proxy._links.discard(self)

    def reset(self) -> None:
        self.to_server.stop()
        self.to_client.stop()
        for transport in self.transports():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                except OSError:
                    pass
            transport.abort()


class FaultProxy:
    """A fault-injecting TCP proxy on loopback; see the module docstring.

    Use as a context manager (``with FaultProxy(host, port) as proxy:``), or
    ``start()`` and ``close()``. Clients connect to ``proxy.port``.
    """

    def __init__(self, host: str, port: int, *, lifetime: float = 300.0) -> None:
        self._target = (host, port)
        self._lifetime = lifetime
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._ready = threading.Event()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Fault settings: read by the pipes on the proxy's own loop only.
        self._stalled = False
        self._latency = 0.0
        self._holding_eof = False
        self._fragment: int | None = None
        self._refusing = False
        self.port = 0
        #: Links accepted, and faults applied by kind (for reports).
        self.accepted = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self.bytes_forwarded = 0

    def __repr__(self) -> str:
        return f"<FaultProxy 127.0.0.1:{self.port} -> {self._target[0]}:{self._target[1]}>"

    # -- life cycle ----------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name=repr(self), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def close(self) -> None:
        """Stop forwarding, drop every link, and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    @property
    def open_links(self) -> int:
        return self._call(lambda: len(self._links))

    # -- faults ----------------------------------------------------------------

    def cut(self) -> int:
        """Reset every open link at once; how many there were."""

        def do() -> int:
            links = list(self._links)
            for link in links:
                link.reset()
            self._links.clear()
            self.faults["cut"] += 1
            return len(links)

        return self._call(do)

    def stall(self, seconds: float | None = None) -> None:
        """Forward nothing, either way, until ``resume()`` (or ``seconds``)."""

        def do() -> None:
            self._stalled = True
            self.faults["stall"] += 1
            self._later("stall", seconds, self._resume)

        self._call(do)

    def resume(self) -> None:
        self._call(self._resume)

    def set_latency(self, seconds: float, duration: float | None = None) -> None:
        """Delay each chunk by ``seconds``, both ways (0: no delay), for
        ``duration`` seconds (``None``: until changed)."""

        def do() -> None:
            self._latency = seconds
            if seconds:
                self.faults["latency"] += 1
            self._later("latency", duration, self._no_latency)

        self._call(do)

    def _no_latency(self) -> None:
        self._latency = 0.0

    def refuse(self, seconds: float | None = None) -> None:
        """Refuse new connects until ``allow()`` (or ``seconds``)."""
        self._run_coroutine(self._refuse(seconds))

    def allow(self) -> None:
        self._run_coroutine(self._allow())

    def hold_eof(self) -> None:
        """Hold back the server's hang-up from the client (not its data)."""

        def do() -> None:
            self._holding_eof = True

        self._call(do)

    def release_eof(self) -> None:
        def do() -> None:
            self._holding_eof = False
            self._drain_all()

        self._call(do)

    def fragment(self, size: int | None) -> None:
        """Pass the server's bytes on ``size`` at a time (``None``: as read)."""

        def do() -> None:
            self._fragment = size

        self._call(do)

    # -- inside the proxy's thread -----------------------------------------

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._listen())
            loop.call_later(self._lifetime, loop.stop)
            self._ready.set()
            loop.run_forever()
        finally:
            for link in list(self._links):
                link.reset()
            if self._server is not None:
                self._server.close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True, start_serving=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self) -> _Side:
        loop = asyncio.get_running_loop()
        link = _Link(self, loop)
        self._links.add(link)
        self.accepted += 1
        link.client = _Side(link, link.to_server, link.to_client, to_client=False)
        task = loop.create_task(self._open_server_side(link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return link.client

    async def _open_server_side(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        try:
            _transport, server = await loop.create_connection(
                lambda: _Side(link, link.to_client, link.to_server, to_client=True), *self._target
            )
        except OSError:
            link.reset()
            self._links.discard(link)
            return
        link.server = server

    async def _refuse(self, seconds: float | None) -> None:
        if not self._refusing and self._server is not None:
            self._refusing = True
            # Only the listening socket closes (``wait_closed`` would wait
            # for the open links too): connects are refused from now on.
            self._server.close()
        self.faults["refuse"] += 1
        self._later("refuse", seconds, lambda: asyncio.get_running_loop().create_task(self._allow()))

    async def _allow(self) -> None:
        self._cancel_timer("refuse")
        if self._refusing:
            self._refusing = False
            await self._listen()

    def _resume(self) -> None:
        self._cancel_timer("stall")
        self._stalled = False
        self._drain_all()

    def _drain_all(self) -> None:
        for link in list(self._links):
            link.to_server._drain()
            link.to_client._drain()

    def _later(self, name: str, seconds: float | None, fn: Callable[[], object]) -> None:
        self._cancel_timer(name)
        if seconds is not None:
            assert self._loop is not None
            self._timers[name] = self._loop.call_later(seconds, fn)

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    # -- crossing threads -----------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the fault proxy is not running")
        if threading.current_thread() is self._thread:
            return fn()
        done = threading.Event()
        result: list[Any] = []

        def run() -> None:
            try:
                result.append((True, fn()))
            except BaseException as exc:
                result.append((False, exc))
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("the fault proxy did not answer")
        ok, value = result[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _run_coroutine(self, coro: Any) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the fault proxy is not running")
        asyncio.run_coroutine_threadsafe(coro, loop).result(10)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` from a synchronous test until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s")
        time.sleep(0.005)
