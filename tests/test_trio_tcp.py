"""A real trio resource: pooled TCP streams to a server that hangs up.

These run the example in ``examples/trio_tcp_pool.py`` under trio, against
its line server on a loopback port.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from asyncpool import AsyncPool, PoolStats

# The examples are scripts side by side in one folder, not a package (the
# trade logger imports its sibling ``_pgcluster`` the same way), so they are
# imported by their own names, as mypy sees them too.
_EXAMPLES = str(Path(__file__).resolve().parent.parent / "examples")
if _EXAMPLES not in sys.path:
    sys.path.insert(0, _EXAMPLES)

from trio_tcp_pool import (  # noqa: E402
    LOOPBACK,
    Client,
    LineReader,
    ServerStats,
    TcpStreamConnector,
    run_demo,
    start_server,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", [pytest.param(("trio", {}), id="trio")]),
]


class TrackingConnector(TcpStreamConnector):
    """Remembers every stream it opened, each close, and each validation."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.streams: list[trio.SocketStream] = []
        self.close_calls: Counter[int] = Counter()
        self.validations: list[bool] = []

    async def connect(self) -> trio.SocketStream:
        stream = await super().connect()
        self.streams.append(stream)
        return stream

    async def validate(self, stream: trio.SocketStream) -> bool:
        ok = await super().validate(stream)
        self.validations.append(ok)
        return ok

    async def close(self, stream: trio.SocketStream) -> None:
        self.close_calls[id(stream)] += 1
        await super().close(stream)


class _Chunks(trio.abc.ReceiveStream):
    """Delivers fixed chunks, then end-of-file."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = list(chunks)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self._chunks.pop(0) if self._chunks else b""

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_line_reader_joins_split_lines_and_keeps_what_follows() -> None:
    reader = LineReader(_Chunks(b"he", b"l", b"lo\nwor", b"ld\n\nPI", b"NG\ntail"))
    assert await reader.readline() == b"hello"
    assert reader.pending == 3
    assert await reader.readline() == b"world"
    assert await reader.readline() == b""
    assert await reader.readline() == b"PING"
    with pytest.raises(EOFError):
        await reader.readline()
    assert reader.pending == 4


async def test_line_reader_refuses_overlong_lines() -> None:
    reader = LineReader(_Chunks(b"x" * 10, b"x" * 10, b"\n"), max_line=15)
    with pytest.raises(ValueError, match="longer than 15"):
        await reader.readline()


async def test_pool_of_five_replaces_streams_the_server_drops() -> None:
    clients, requests_per_client, max_size = 50, 20, 5
    server = ServerStats()
    samples: list[PoolStats] = []
    bad: list[PoolStats] = []

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, 0.2, seed=20240611, stats=server)
            connector = TrackingConnector(LOOPBACK, port)
            pool = AsyncPool(connector, max_size=max_size, timeout=10.0, name="trio-tcp")
            client = Client(pool, connector, max_attempts=10)

            async def monitor() -> None:
                while True:
                    stats = pool.stats()
                    samples.append(stats)
                    if not stats.in_use + stats.idle <= stats.size <= max_size:
                        bad.append(stats)
                    await trio.sleep(0)

            async def worker(n: int) -> None:
                for i in range(requests_per_client):
                    line = f"task {n} request {i}"
                    assert await client.call(line) == line.upper()

            await pool.open()
            async with trio.open_nursery() as watched:
                watched.start_soon(monitor)
                async with trio.open_nursery() as workers:
                    for n in range(clients):
                        workers.start_soon(worker, n)
                watched.cancel_scope.cancel()
            await pool.close()
            nursery.cancel_scope.cancel()

    stats = pool.stats()
    assert client.ok == clients * requests_per_client
    assert samples and not bad, bad[:3]
    assert max(s.size for s in samples) <= max_size
    # The server hung up on some of them; each was retired and replaced.
    assert server.dropped > 0
    assert stats.created > max_size
    assert stats.health_failures > 0 or stats.destroyed > 0
    assert stats.timeouts == 0
    # Closed: every stream the connector opened was closed exactly once.
    assert stats.size == 0
    assert stats.created == stats.destroyed == len(connector.streams) == connector.opened == connector.closed
    assert connector.close_calls == Counter(id(stream) for stream in connector.streams)
    assert all(stream.socket.fileno() == -1 for stream in connector.streams)


async def test_stream_the_server_closed_while_idle_is_validated_and_not_lent() -> None:
    server = ServerStats()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, idle_timeout=0.2, stats=server)
            connector = TrackingConnector(LOOPBACK, port)
            options: dict[str, Any] = {"validate_after": 0.05, "health_check_interval": None, "max_idle": None}
            async with AsyncPool(connector, max_size=2, **options) as pool:
                async with pool.acquire() as first:
                    assert await connector.request(first, "hello") == "HELLO"
                assert connector.validations == []
                # Wait for the server's idle hang-up to reach the pooled stream.
                while not first.socket.is_readable():
                    await trio.sleep(0.01)
                assert server.idle_closed == 1
                assert pool.stats().idle == 1

                async with pool.acquire() as second:
                    assert second is not first
                    assert await connector.request(second, "still there?") == "STILL THERE?"

                stats = pool.stats()
                assert connector.validations == [False]
                assert (stats.health_failures, stats.destroyed, stats.created) == (1, 1, 2)
                assert connector.close_calls == Counter({id(first): 1})
            nursery.cancel_scope.cancel()


async def test_demo_answers_every_request_within_max_size() -> None:
    with trio.fail_after(30):
        result = await run_demo(clients=20, requests_per_client=10, drop_probability=0.3, seed=5)
    assert result.ok == result.requests == 200
    assert result.peak_size <= result.max_size == 5
    assert result.created == result.destroyed > result.max_size
    assert result.server.dropped > 0
