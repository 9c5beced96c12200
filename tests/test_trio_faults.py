"""Network faults under trio: the pool, a real TCP connector, a real proxy.

These drive ``AsyncPool`` under trio with the example's
``TcpStreamConnector`` (``examples/trio_tcp_pool.py``), whose streams go
through a :class:`~tests.faultproxy.FaultProxy` to the example's line server.
The server runs inside each test, on a loopback port; the proxy runs in a
thread of its own and breaks the network on command: it resets every link,
goes silent, refuses connects, or delays every chunk.

The fake connector of the other tests decides itself when a resource fails;
here the failures are those of real sockets (a reset in the middle of a
read, a ping that never gets an answer, a refused connect), seen through
trio's own exceptions, and the pool must hold up the same way: callers get
the connector's error or the pool's, never a hang; broken streams are
retired and replaced; every stream the connector opened is closed exactly
once. Each test is bounded by ``trio.fail_after``, so a hang fails it rather
than stalling the suite. The clock is real (not ``MockClock``): the proxy and
the sockets live in real time.
"""

from __future__ import annotations

import itertools
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from asyncpool import AsyncPool, PoolClosed, PoolTimeout

from .faultproxy import FaultProxy

# The examples are scripts side by side in one folder, not a package; they
# are imported by their own names, as in test_trio_tcp.py (and as mypy sees
# them).
_EXAMPLES = str(Path(__file__).resolve().parent.parent / "examples")
if _EXAMPLES not in sys.path:
    sys.path.insert(0, _EXAMPLES)

from trio_tcp_pool import (  # noqa: E402
    LOOPBACK,
    ConnectionDropped,
    ServerStats,
    TcpStreamConnector,
    start_server,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", [pytest.param(("trio", {}), id="trio")]),
]


@dataclass
class Attempt:
    """One call of ``connect``: which task made it, when, and how it ended."""

    task: trio.lowlevel.Task
    started: float
    ended: float = 0.0
    error: BaseException | None = None


class FaultConnector(TcpStreamConnector):
    """The example's connector, recording what the pool made it do.

    Every stream it opened (and when), each close, each completed
    validation, and each connect attempt with the task that made it: the
    pool's connect workers each run in a task of their own, so attempts
    grouped by task are one worker's retries, and their spacing is its
    backoff.
    """

    def __init__(self, host: str, port: int, *, ping_timeout: float = 1.0) -> None:
        super().__init__(host, port, ping_timeout=ping_timeout)
        self.streams: list[trio.SocketStream] = []
        self.born: dict[int, float] = {}
        self.close_calls: Counter[int] = Counter()
        self.validations: list[bool] = []
        self.attempts: list[Attempt] = []

    async def connect(self) -> trio.SocketStream:
        attempt = Attempt(trio.lowlevel.current_task(), trio.current_time())
        self.attempts.append(attempt)
        try:
            stream = await super().connect()
        except BaseException as exc:
            attempt.ended = trio.current_time()
            attempt.error = exc
            raise
        attempt.ended = trio.current_time()
        # The list keeps every stream alive, so no ``id`` is ever reused.
        self.streams.append(stream)
        self.born[id(stream)] = attempt.ended
        return stream

    async def validate(self, stream: trio.SocketStream) -> bool:
        ok = await super().validate(stream)
        self.validations.append(ok)
        return ok

    async def close(self, stream: trio.SocketStream) -> None:
        self.close_calls[id(stream)] += 1
        await super().close(stream)

    def failed_attempts(self) -> list[Attempt]:
        return [attempt for attempt in self.attempts if attempt.error is not None]


def assert_every_stream_closed_once(connector: FaultConnector) -> None:
    assert connector.opened == connector.closed == len(connector.streams)
    assert connector.close_calls == Counter(id(stream) for stream in connector.streams)
    assert all(stream.socket.fileno() == -1 for stream in connector.streams)


@asynccontextmanager
async def line_server_behind_proxy() -> AsyncIterator[tuple[FaultProxy, ServerStats]]:
    """The example's line server on a loopback port, and a fault proxy in front of it."""
    stats = ServerStats()
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, stats=stats)
        # The proxy's controls block this thread until the fault is in effect,
        # a millisecond or so: harmless here, and it means that once a call
        # returns, no trio task has run on the old network state.
        with FaultProxy(LOOPBACK, port, lifetime=60) as proxy:
            yield proxy, stats
        nursery.cancel_scope.cancel()


@dataclass
class Request:
    """One request a worker sent: on which stream, when, and how it ended."""

    task: int
    stream: int
    started: float
    error: BaseException | None = None


async def test_cut_mid_request_fails_the_requests_in_flight_and_the_pool_recovers() -> None:
    # Enough tasks that the pool is always full and streams go straight from
    # one borrower to the next, and enough latency that requests are in
    # flight whenever the cut comes.
    tasks, max_size, latency = 12, 4, 0.05
    requests: dict[tuple[int, int], Request] = {}
    in_flight: dict[int, tuple[int, int]] = {}
    recovered: set[int] = set()
    failed_streams: set[int] = set()
    cut_at = trio.current_time() + 3600.0
    stop = trio.Event()

    with trio.fail_after(15):
        async with line_server_behind_proxy() as (proxy, server):
            connector = FaultConnector(LOOPBACK, proxy.port)
            proxy.set_latency(latency)
            pool = AsyncPool(connector, max_size=max_size, timeout=5.0, health_check_interval=None, name="cut")

            async def worker(n: int) -> None:
                i = 0
                while not stop.is_set():
                    key = (n, i)
                    line = f"task {n} request {i}"
                    i += 1
                    try:
                        async with pool.acquire() as stream:
                            request = requests[key] = Request(n, id(stream), trio.current_time())
                            in_flight[n] = key
                            try:
                                reply = await connector.request(stream, line)
                            finally:
                                del in_flight[n]
                    except ConnectionDropped as exc:
                        # Only the connector's own error may reach a caller;
                        # anything else (a PoolTimeout: a hang) fails the test.
                        request.error = exc
                        # A stream that failed must be retired, never lent
                        # again (else the workers would spin on it until the
                        # deadline: fail here, and say why).
                        assert request.stream not in failed_streams, "a stream that failed was lent again"
                        failed_streams.add(request.stream)
                        continue
                    assert reply == line.upper()
                    if request.started > cut_at:
                        recovered.add(n)

            async with pool:
                async with trio.open_nursery() as nursery:
                    for n in range(tasks):
                        nursery.start_soon(worker, n)
                    # Warm up: the pool at full size, every stream lent in turn.
                    while sum(r.error is None for r in requests.values()) < 3 * max_size:
                        await trio.sleep(0.01)
                    # Cut when a request is less than one latency old: its line
                    # is still held in the proxy, so no reply can be on the way.
                    while not any(
                        requests[key].started > trio.current_time() - latency / 2 for key in in_flight.values()
                    ):
                        await trio.sleep(0.001)
                    cut_at = trio.current_time()
                    caught = dict(in_flight)
                    before_cut = list(connector.streams)
                    links = proxy.cut()
                    # Every task gets a request through again, on new streams.
                    while len(recovered) < tasks:
                        await trio.sleep(0.01)
                    stop.set()
                # Every worker has finished its last request.
                settled = pool.stats()
                replaced = [connector.close_calls[id(stream)] for stream in before_cut]

    assert links == len(before_cut) == max_size
    # Nobody holds a stream any more, and each cut one was already retired
    # (closed once) before the pool closed.
    assert settled.in_use == 0 and settled.size <= max_size
    assert replaced == [1] * max_size
    # A request younger than one latency at the cut never reached the
    # server: it must have failed, with the connector's error.
    doomed = [requests[key] for key in caught.values() if requests[key].started > cut_at - latency]
    assert doomed
    assert all(isinstance(r.error, ConnectionDropped) for r in doomed)
    # Only the cut streams ever failed (each once, see the worker): their
    # replacements all worked.
    assert failed_streams <= {id(stream) for stream in before_cut}
    stats = pool.stats()
    assert stats.in_use == stats.size == 0
    assert stats.timeouts == 0
    assert stats.created == len(connector.streams) > max_size
    assert server.connections == len(connector.streams)
    assert_every_stream_closed_once(connector)


@pytest.mark.parametrize(
    ("ping_timeout", "cleanup_timeout"),
    [pytest.param(0.3, 5.0, id="ping-timeout"), pytest.param(30.0, 0.3, id="cleanup-timeout")],
)
async def test_stall_during_validation_is_bounded_and_the_stream_replaced(
    ping_timeout: float, cleanup_timeout: float
) -> None:
    # Whichever is shorter bounds the ping: the connector's own timeout (the
    # ping then answers False) or the pool's cleanup_timeout (the pool
    # cancels it).
    bound = min(ping_timeout, cleanup_timeout)
    with trio.fail_after(10):
        async with line_server_behind_proxy() as (proxy, _server):
            connector = FaultConnector(LOOPBACK, proxy.port, ping_timeout=ping_timeout)
            pool = AsyncPool(
                connector,
                max_size=1,
                timeout=5.0,
                validate_after=0.05,
                cleanup_timeout=cleanup_timeout,
                health_check_interval=None,
                max_idle=None,
            )
            async with pool:
                with trio.fail_after(2):
                    async with pool.acquire() as first:
                        assert await connector.request(first, "hello") == "HELLO"
                await trio.sleep(0.1)  # idle past validate_after: due for a ping

                # A half-open network: the sockets stay up, nothing gets through.
                proxy.stall()
                started = trio.current_time()
                with trio.fail_after(bound + 2):
                    second = await pool.acquire()
                took = trio.current_time() - started
                # The ping went unanswered for exactly its bound; the stream was
                # retired, and connecting (which the proxy still accepts) gave a
                # new one at once.
                assert bound <= took < bound + 1.0
                assert second is not first
                assert connector.validations == ([False] if ping_timeout < cleanup_timeout else [])
                assert connector.close_calls == Counter({id(first): 1})
                stats = pool.stats()
                assert (stats.health_failures, stats.created, stats.destroyed, stats.in_use) == (1, 2, 1, 1)

                # The new stream works once the network is back, not before.
                replies: list[str] = []

                async def ask() -> None:
                    replies.append(await connector.request(second, "are you there?"))

                with trio.fail_after(5):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(ask)
                        await trio.sleep(0.2)
                        assert replies == []
                        proxy.resume()
                assert replies == ["ARE YOU THERE?"]
                with trio.fail_after(2):
                    await pool.release(second)
                    async with pool.acquire() as third:
                        assert third is second  # fresh: lent without a ping
                        assert await connector.request(third, "again") == "AGAIN"
            assert pool.stats().size == 0
            assert_every_stream_closed_once(connector)


async def test_stall_during_validation_is_cut_by_the_acquire_deadline() -> None:
    # The caller's deadline comes before either timeout of the ping: the
    # acquire ends on time with PoolTimeout. The stream, interrupted
    # mid-ping, cannot be trusted and is retired, but not counted as dead.
    with trio.fail_after(10):
        async with line_server_behind_proxy() as (proxy, _server):
            connector = FaultConnector(LOOPBACK, proxy.port, ping_timeout=30.0)
            pool = AsyncPool(
                connector, max_size=1, timeout=5.0, validate_after=0.05, health_check_interval=None, max_idle=None
            )
            async with pool:
                with trio.fail_after(2):
                    async with pool.acquire() as first:
                        assert await connector.request(first, "hello") == "HELLO"
                await trio.sleep(0.1)
                proxy.stall()
                started = trio.current_time()
                with trio.fail_after(2), pytest.raises(PoolTimeout):
                    await pool.acquire(timeout=0.3)
                assert 0.3 <= trio.current_time() - started < 1.3
                stats = pool.stats()
                assert (stats.timeouts, stats.health_failures, stats.destroyed, stats.in_use) == (1, 0, 1, 0)
                # Its close runs in the background, off the caller's path.
                with trio.fail_after(1):
                    while not connector.close_calls:
                        await trio.sleep(0.005)
                assert connector.close_calls == Counter({id(first): 1})
                proxy.resume()
                with trio.fail_after(2):
                    async with pool.acquire() as second:
                        assert second is not first
                        assert await connector.request(second, "back") == "BACK"
            assert_every_stream_closed_once(connector)


async def test_refused_connects_time_out_with_their_cause_then_recover_with_backoff() -> None:
    delay, max_delay = 0.1, 0.8
    # Long enough for one connect worker to fail at least five times
    # (0.1 + 0.2 + 0.4 + 0.8 s of backoff at most before the fifth attempt).
    outage = 1.8
    # Scheduling latency allowed on top of a backoff sleep (never below it).
    slack = 0.15
    with trio.fail_after(15):
        async with line_server_behind_proxy() as (proxy, _server):
            connector = FaultConnector(LOOPBACK, proxy.port)
            pool = AsyncPool(
                connector,
                max_size=2,
                timeout=5.0,
                health_check_interval=None,
                reconnect_delay=delay,
                reconnect_max_delay=max_delay,
            )
            async with pool, trio.open_nursery() as nursery:
                assert pool.stats().size == 0
                proxy.refuse()

                # During the outage an acquire times out, and says why.
                for _ in range(3):
                    with trio.fail_after(2), pytest.raises(PoolTimeout) as info:
                        await pool.acquire(timeout=0.15)
                    cause = info.value.__cause__
                    assert isinstance(cause, OSError)
                    assert any(cause is attempt.error for attempt in connector.failed_attempts())
                    # trio's "all attempts failed" wraps the refusal itself.
                    refusals = getattr(cause.__cause__, "exceptions", ())
                    assert refusals and all(isinstance(exc, ConnectionRefusedError) for exc in refusals)
                assert pool.stats().created == 0

                # One acquire waits through the rest of the outage.
                allowed_at = trio.current_time() + outage

                async def allow_later() -> None:
                    await trio.sleep_until(allowed_at)
                    proxy.allow()

                nursery.start_soon(allow_later)
                with trio.fail_after(outage + 3):
                    stream = await pool.acquire()
                # It is lent by the first attempt after the network is back, at
                # most one full backoff later.
                assert trio.current_time() - allowed_at < max_delay + slack
                assert await connector.request(stream, "back") == "BACK"
                await pool.release(stream)

                # The worker that connected retried all through the outage.
                winner = connector.attempts[-1]
                assert winner.error is None and winner.ended >= allowed_at
                attempts = [a for a in connector.attempts if a.task is winner.task]
                assert len(attempts) >= 6 and all(a.error is not None for a in attempts[:-1])
                gaps = [later.started - earlier.ended for earlier, later in itertools.pairwise(attempts)]
                for i, gap in enumerate(gaps):
                    # backoff_delay: uniform in [d/2, d], d doubling from
                    # reconnect_delay up to reconnect_max_delay (the last gap,
                    # before the attempt that worked, too: its sleep began
                    # during the outage).
                    d = min(max_delay, delay * 2**i)
                    assert d / 2 - 0.005 <= gap <= d + slack, (i, gaps)
                # So the gaps grow: two steps on, even the shortest draw beats
                # the longest one before (until the cap).
                assert gaps[2] > gaps[0] and gaps[3] > gaps[1], gaps
                stats = pool.stats()
                assert stats.connect_errors == len(connector.failed_attempts())
                assert stats.created == 1
            assert_every_stream_closed_once(connector)


@pytest.mark.parametrize(
    ("latency", "close_timeout", "forced"),
    [pytest.param(0.01, 2.0, False, id="leases-return"), pytest.param(0.1, 0.05, True, id="leases-forced")],
)
async def test_close_under_load(latency: float, close_timeout: float, forced: bool) -> None:
    # Close in mid-stream: with the latency, some tasks are in the middle of
    # a request and the rest are waiting. Waiters get PoolClosed. Leases held
    # come back in time (leases-return), or outlive close's timeout and are
    # closed under their borrowers, whose requests then fail with the
    # connector's error (leases-forced).
    tasks, max_size = 30, 4
    outcomes: Counter[str] = Counter()
    in_flight: dict[int, float] = {}
    with trio.fail_after(15):
        async with line_server_behind_proxy() as (proxy, server):
            connector = FaultConnector(LOOPBACK, proxy.port)
            proxy.set_latency(latency)
            pool = AsyncPool(connector, max_size=max_size, timeout=5.0, health_check_interval=None)

            async def worker(n: int) -> None:
                i = 0
                while True:
                    line = f"task {n} request {i}"
                    i += 1
                    try:
                        async with pool.acquire() as stream:
                            in_flight[n] = trio.current_time()
                            try:
                                reply = await connector.request(stream, line)
                            finally:
                                del in_flight[n]
                    except PoolClosed:
                        outcomes["closed"] += 1
                        return
                    except ConnectionDropped:
                        outcomes["dropped"] += 1
                        continue  # the next acquire gets PoolClosed
                    assert reply == line.upper()
                    outcomes["ok"] += 1

            await pool.open()
            async with trio.open_nursery() as nursery:
                for n in range(tasks):
                    nursery.start_soon(worker, n)
                while outcomes["ok"] < 2 * max_size:
                    await trio.sleep(0.005)
                # Close just after a request went out: with leases-forced, it
                # is then sure to outlive close's timeout (the streams' requests
                # run in lockstep, so they could all be about to finish).
                while not any(started > trio.current_time() - 0.02 for started in in_flight.values()):
                    await trio.sleep(0.001)
                at_close = pool.stats()
                started = trio.current_time()
                await pool.close(timeout=close_timeout)
                took = trio.current_time() - started
                assert pool.stats().size == 0  # close() returns once all are closed
            # Every task has ended: none hangs.

    assert at_close.waiting > 0 and at_close.in_use > 0
    assert outcomes["closed"] == tasks
    if forced:
        assert close_timeout <= took < close_timeout + 1.0
        assert 0 < outcomes["dropped"] <= at_close.in_use
    else:
        assert took < close_timeout
        assert outcomes["dropped"] == 0
    stats = pool.stats()
    assert (stats.size, stats.in_use, stats.idle, stats.waiting) == (0, 0, 0, 0)
    assert stats.created == stats.destroyed == len(connector.streams) <= max_size
    assert server.connections == len(connector.streams)
    assert_every_stream_closed_once(connector)


async def test_max_lifetime_recycles_streams_under_load_without_failing_a_request() -> None:
    tasks, max_size, lifetime, duration = 16, 4, 0.25, 1.5
    lent_at_age: list[float] = []
    peak_size = 0
    stop = trio.Event()
    with trio.fail_after(15):
        async with line_server_behind_proxy() as (proxy, server):
            connector = FaultConnector(LOOPBACK, proxy.port)
            proxy.set_latency(0.002)
            pool = AsyncPool(
                connector, max_size=max_size, timeout=5.0, max_lifetime=lifetime, health_check_interval=None
            )

            async def worker(n: int) -> None:
                nonlocal peak_size
                i = 0
                while not stop.is_set():
                    line = f"task {n} request {i}"
                    i += 1
                    # No try: any error reaching a caller fails the test.
                    async with pool.acquire() as stream:
                        lent_at_age.append(trio.current_time() - connector.born[id(stream)])
                        peak_size = max(peak_size, pool.stats().size)
                        assert await connector.request(stream, line) == line.upper()

            async with pool, trio.open_nursery() as nursery:
                for n in range(tasks):
                    nursery.start_soon(worker, n)
                await trio.sleep(duration)
                stop.set()
            final = pool.stats()  # (after close: the counters stay)

    # Recycled: lifetimes ran out many times over (about duration / lifetime
    # generations of max_size streams), never as a failure.
    assert final.created >= 3 * max_size
    assert final.health_failures == final.connect_errors == final.timeouts == 0
    assert final.acquired == len(lent_at_age)
    # No stream was lent long after its lifetime: the pool checks expiry as
    # streams come back, on a clock that may lag a tick (and a busy loop).
    assert max(lent_at_age) < lifetime + 0.2, max(lent_at_age)
    # A stream being closed still counts in size: recycling never exceeds max_size.
    assert peak_size <= max_size and connector.peak_open <= max_size
    assert server.connections == len(connector.streams)
    assert_every_stream_closed_once(connector)
