"""The fault proxy the fault tests rely on: each fault does what it says."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from .faultproxy import FaultProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            if data == b"bye\n":
                writer.write(b"goodbye\n")
                await writer.drain()
                break
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.CancelledError):
        pass  # the test is over: its loop cancels what is left
    finally:
        writer.close()


@pytest_asyncio.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with FaultProxy("127.0.0.1", port, lifetime=60) as fault_proxy:
        yield fault_proxy
    server.close()


async def _connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


@pytest.mark.asyncio
async def test_forwards_both_ways(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    writer.write(b"ping\n")
    assert await asyncio.wait_for(reader.readline(), 2) == b"ping\n"
    writer.close()


@pytest.mark.asyncio
async def test_cut_resets_every_open_link(proxy: FaultProxy) -> None:
    links = [await _connect(proxy) for _ in range(3)]
    for reader, writer in links:
        writer.write(b"x\n")
        await reader.readline()
    assert proxy.cut() == 3
    for reader, _writer in links:
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 2)
    # New connections still work.
    reader, writer = await _connect(proxy)
    writer.write(b"again\n")
    assert await asyncio.wait_for(reader.readline(), 2) == b"again\n"
    writer.close()


@pytest.mark.asyncio
async def test_stall_forwards_nothing_until_resumed(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    proxy.stall()
    writer.write(b"held\n")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.readline(), 0.2)
    proxy.resume()
    assert await asyncio.wait_for(reader.readline(), 2) == b"held\n"
    writer.close()


@pytest.mark.asyncio
async def test_a_timed_stall_ends_by_itself(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    proxy.stall(0.2)
    started = time.monotonic()
    writer.write(b"later\n")
    assert await asyncio.wait_for(reader.readline(), 2) == b"later\n"
    assert time.monotonic() - started >= 0.15
    writer.close()


@pytest.mark.asyncio
async def test_latency_delays_each_chunk_and_keeps_their_order(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    proxy.set_latency(0.1)
    started = time.monotonic()
    writer.write(b"a\n")
    assert await asyncio.wait_for(reader.readline(), 2) == b"a\n"
    assert time.monotonic() - started >= 0.19  # there and back
    writer.write(b"b\n")
    await asyncio.sleep(0.01)
    proxy.set_latency(0.0)  # a later chunk may not overtake an earlier one
    writer.write(b"c\n")
    assert await asyncio.wait_for(reader.readline(), 2) == b"b\n"
    assert await asyncio.wait_for(reader.readline(), 2) == b"c\n"
    writer.close()


@pytest.mark.asyncio
async def test_refuse_turns_new_connects_away_and_keeps_open_links(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    # A round trip first: a connect still in the listen backlog when the
    # listener closes is refused too.
    writer.write(b"first\n")
    assert await asyncio.wait_for(reader.readline(), 2) == b"first\n"
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        await _connect(proxy)
    writer.write(b"still\n")
    assert await asyncio.wait_for(reader.readline(), 2) == b"still\n"
    proxy.allow()
    reader2, writer2 = await _connect(proxy)
    writer2.write(b"back\n")
    assert await asyncio.wait_for(reader2.readline(), 2) == b"back\n"
    writer.close()
    writer2.close()


@pytest.mark.asyncio
async def test_hold_eof_passes_the_last_words_but_not_the_hang_up(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    proxy.hold_eof()
    writer.write(b"bye\n")
    assert await asyncio.wait_for(reader.readline(), 2) == b"goodbye\n"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.2)  # no EOF yet
    proxy.release_eof()
    assert await asyncio.wait_for(reader.read(1), 2) == b""
    writer.close()


@pytest.mark.asyncio
async def test_fragment_delivers_the_servers_bytes_in_pieces(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    proxy.fragment(3)
    writer.write(b"abcdefghij\n")
    reads: list[bytes] = []
    while sum(len(read) for read in reads) < 11:
        reads.append(await asyncio.wait_for(reader.read(100), 2))
    assert b"".join(reads) == b"abcdefghij\n"
    assert len(reads) >= 3
    writer.close()


def test_the_proxy_stops_by_itself_after_its_lifetime() -> None:
    proxy = FaultProxy("127.0.0.1", 9, lifetime=0.2).start()
    thread = proxy._thread
    assert thread is not None
    thread.join(3)
    assert not thread.is_alive()
