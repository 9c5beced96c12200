"""High-frequency trade logger: a connection per trade versus a pool.

A trading service writes every fill to PostgreSQL the moment it happens.
The naive way opens a connection for each trade (TCP handshake, start-up
message, authentication, a backend process forked by the server), runs one
INSERT and closes it again; the INSERT is the cheap part. This demo logs the
same stream of trades twice, with the same number of concurrent tasks:

1. **connect per trade**: ``asyncpg.connect()``, ``INSERT``, ``close()``;
2. **asyncpool**: ``async with pool.acquire() as conn: await conn.execute(...)``
   on an :class:`asyncpool.AsyncPool` of already open connections.

It prints throughput, median and 99th-percentile latency per trade for each
phase, and how much faster the pool is. Latency is measured per trade, from
asking for a connection until the trade is written and the connection is
closed or returned. The pool is opened (and filled) before its clock starts,
as it would be at service start-up; the time that took is reported too.

Run it with::

    python examples/trade_logger.py                  # 2000 trades, 20 tasks
    python examples/trade_logger.py --trades 10000 --concurrency 50

Which database it uses:

* ``ASYNCPOOL_DSN``, when set (e.g. ``postgresql://user:pass@host/db``);
* otherwise the local server at ``postgresql://postgres@127.0.0.1:5432/postgres``;
* otherwise, when PostgreSQL's server binaries are installed, a throwaway
  cluster in a temporary directory, removed again when the demo ends;
* otherwise it exits with status 2 and says what to install.

The demo creates the table ``asyncpool_demo_trades`` and drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from types import FrameType
from typing import TextIO

import asyncpg
from _pgcluster import ClusterError, TemporaryCluster, find_server_bindir

try:
    from asyncpool import AsyncPool
    from asyncpool.asyncpg import AsyncpgConnector, mask_dsn
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise SystemExit(
        "This demo needs asyncpool: `pip install -e .` in the repository, "
        f"or run it with PYTHONPATH=. from there ({exc})."
    ) from exc

DSN_ENV = "ASYNCPOOL_DSN"
LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
# Points the local-server probe elsewhere, e.g. at a closed port to try the
# throwaway-cluster path on a machine that does run a local server.
LOCAL_DSN_ENV = "ASYNCPOOL_DEMO_LOCAL_DSN"

TABLE = "asyncpool_demo_trades"
SYMBOLS = (
    "AAPL",
    "MSFT",
    "NVDA",
    "AMZN",
    "GOOG",
    "META",
    "TSLA",
    "AMD",
    "INTC",
    "ORCL",
)

CREATE_TABLE = f"""
CREATE TABLE {TABLE} (
    id      bigserial PRIMARY KEY,
    phase   text          NOT NULL,
    symbol  text          NOT NULL,
    price   numeric(12,4) NOT NULL,
    qty     integer       NOT NULL,
    ts      timestamptz   NOT NULL
)
"""
INSERT_TRADE = f"INSERT INTO {TABLE} (phase, symbol, price, qty, ts) VALUES ($1, $2, $3, $4, $5)"

EXIT_NO_DATABASE = 2
EXIT_INTERRUPTED = 130

PROBE_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class Trade:
    """One fill to log."""

    symbol: str
    price: Decimal
    qty: int


@dataclass(slots=True)
class PhaseResult:
    """What one phase measured."""

    name: str
    trades: int
    seconds: float
    latencies: list[float] = field(repr=False)
    note: str = ""

    @property
    def rate(self) -> float:
        """Trades per second over the whole phase."""
        return self.trades / self.seconds if self.seconds > 0 else float("nan")

    def latency_ms(self, q: float) -> float:
        """Return the ``q``-th percentile (0-100) of per-trade latency, in ms."""
        return percentile(self.latencies, q) * 1000.0


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100) of ``values``, interpolated."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def make_trades(count: int, *, seed: int = 42) -> list[Trade]:
    """Make a reproducible stream of ``count`` random trades."""
    rng = random.Random(seed)
    trades = []
    for _ in range(count):
        price = Decimal(rng.randint(1_000_000, 5_000_000)) / Decimal(10_000)
        trades.append(Trade(rng.choice(SYMBOLS), price, rng.randint(1, 500)))
    return trades


# -- progress display ----------------------------------------------------------


class Progress:
    """Shows how many trades a phase has logged so far.

    On a terminal it redraws a single line several times a second; otherwise
    (a pipe, a CI log) it prints a plain line every couple of seconds.
    """

    def __init__(self, label: str, total: int, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream
        self._tty = stream.isatty()
        self._interval = 0.1 if self._tty else 2.0
        self._started = time.perf_counter()

    def _line(self) -> str:
        elapsed = time.perf_counter() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return f"{self.label}: {self.done}/{self.total} trades ({percent:5.1f}%), {rate:,.0f} trades/s"

    def _show(self) -> None:
        if self._tty:
            self._stream.write("\r\x1b[K" + self._line())
        else:
            self._stream.write(self._line() + "\n")
        self._stream.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._show()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Progress]:
        """Display progress in the background while the body runs."""
        self._started = time.perf_counter()
        task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._show()
            if self._tty:
                self._stream.write("\n")
                self._stream.flush()


# -- the two phases ------------------------------------------------------------

LogTrade = Callable[[Trade], Awaitable[None]]


async def run_phase(name: str, trades: Sequence[Trade], concurrency: int, log_trade: LogTrade) -> PhaseResult:
    """Log ``trades`` with ``concurrency`` tasks, each calling ``log_trade``.

    The tasks share one queue of trades, so a slow trade holds back only the
    task that is handling it.
    """
    pending: Iterator[Trade] = iter(trades)
    latencies: list[float] = []
    progress = Progress(name, len(trades))

    async def worker() -> None:
        for trade in pending:  # the iterator is shared between the workers
            started = time.perf_counter()
            await log_trade(trade)
            latencies.append(time.perf_counter() - started)
            progress.done += 1

    async with progress.running():
        started = time.perf_counter()
        workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(trades)))]
        try:
            await asyncio.gather(*workers)
        finally:  # one worker failed: stop the others too
            for task in workers:
                task.cancel()
        elapsed = time.perf_counter() - started
    return PhaseResult(name, len(latencies), elapsed, latencies)


async def connect_per_trade(dsn: str, trades: Sequence[Trade], concurrency: int) -> PhaseResult:
    """Phase 1: open a fresh connection for every single trade."""

    async def log_trade(trade: Trade) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                INSERT_TRADE,
                "connect",
                trade.symbol,
                trade.price,
                trade.qty,
                datetime.now(timezone.utc),
            )
        finally:
            await conn.close()

    return await run_phase("connect per trade", trades, concurrency, log_trade)


async def pooled(dsn: str, trades: Sequence[Trade], concurrency: int, pool_size: int) -> PhaseResult:
    """Phase 2: borrow an open connection from an :class:`AsyncPool`."""
    pool = AsyncPool(AsyncpgConnector(dsn), min_size=pool_size, max_size=pool_size)
    opening = time.perf_counter()
    await pool.open(wait=True)
    warm_up = time.perf_counter() - opening
    try:

        async def log_trade(trade: Trade) -> None:
            async with pool.acquire() as conn:
                await conn.execute(
                    INSERT_TRADE,
                    "pool",
                    trade.symbol,
                    trade.price,
                    trade.qty,
                    datetime.now(timezone.utc),
                )

        result = await run_phase(f"asyncpool ({pool_size} connections)", trades, concurrency, log_trade)
    finally:
        await pool.close()
    result.note = f"opening the pool ({pool_size} connections) took {warm_up * 1000:.0f} ms"
    return result


# -- database selection ----------------------------------------------------------


class NoDatabaseError(Exception):
    """Raised when no database can be found or started."""


async def probe(dsn: str) -> str | None:
    """Return ``None`` if ``dsn`` accepts a connection, else the reason why not."""
    try:
        conn = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT)
    except (
        TimeoutError,
        OSError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
    ) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    await conn.close()
    return None


@contextlib.contextmanager
def choose_database(local_dsn: str) -> Iterator[str]:
    """Yield the DSN to use, starting (and later removing) a cluster if needed."""
    configured = os.environ.get(DSN_ENV)
    if configured:
        reason = asyncio.run(probe(configured))
        if reason is not None:
            raise NoDatabaseError(f"cannot connect to {mask_dsn(configured)} (from ${DSN_ENV}): {reason}")
        say(f"database: {mask_dsn(configured)} (from ${DSN_ENV})")
        yield configured
        return

    reason = asyncio.run(probe(local_dsn))
    if reason is None:
        say(f"database: local server {mask_dsn(local_dsn)}")
        yield local_dsn
        return
    say(f"no usable local server at {mask_dsn(local_dsn)} ({reason})")

    bindir = find_server_bindir()
    if bindir is None:
        raise NoDatabaseError(
            "No PostgreSQL server to talk to. Install PostgreSQL (for example "
            "`apt-get install postgresql`) or point the demo at a server with "
            f"{DSN_ENV}=postgresql://user:password@host:port/dbname."
        )
    say(f"starting a throwaway PostgreSQL cluster with {bindir} ...")
    try:
        cluster = TemporaryCluster(bindir=bindir)
        cluster.start()
    except ClusterError as exc:
        raise NoDatabaseError(f"could not start a throwaway cluster: {exc}") from exc
    try:
        say(f"database: throwaway cluster {cluster.dsn} in {cluster.directory}")
        yield cluster.dsn
    finally:
        cluster.stop()
        say("throwaway cluster stopped and removed")


@contextlib.asynccontextmanager
async def trade_table(dsn: str) -> AsyncIterator[None]:
    """Create the demo table for the body, and drop it afterwards."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.execute(CREATE_TABLE)
        yield
    finally:
        # Runs on errors and on Ctrl-C too (the task is cancelled only once).
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.close()


async def count_logged(dsn: str) -> dict[str, int]:
    """How many rows each phase wrote, as a check that nothing was lost."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT phase, count(*) AS n FROM {TABLE} GROUP BY phase")
    finally:
        await conn.close()
    return {row["phase"]: row["n"] for row in rows}


# -- report ------------------------------------------------------------------------


def report(results: Sequence[PhaseResult], concurrency: int, stream: TextIO = sys.stdout) -> None:
    """Print the comparison table and the speed-up."""
    headers = ("phase", "trades", "trades/s", "p50 ms", "p99 ms")
    rows = [
        (
            r.name,
            f"{r.trades:,}",
            f"{r.rate:,.0f}",
            f"{r.latency_ms(50):.2f}",
            f"{r.latency_ms(99):.2f}",
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest))

    print(file=stream)
    print(f"{concurrency} concurrent tasks", file=stream)
    print(line(headers), file=stream)
    print("  ".join("-" * w for w in widths), file=stream)
    for row in rows:
        print(line(row), file=stream)
    for r in results:
        if r.note:
            print(f"({r.note})", file=stream)
    if len(results) == 2:
        baseline, pooled_result = results
        speed_up = pooled_result.rate / baseline.rate
        print(
            f"\nspeed-up: {speed_up:.1f}x more trades/s with asyncpool than with a connection per trade",
            file=stream,
        )


def say(message: str) -> None:
    """Print a status line on stderr, apart from the results on stdout."""
    print(message, file=sys.stderr, flush=True)


# -- command line --------------------------------------------------------------------


def positive_int(text: str) -> int:
    """Parse an integer of at least 1 (an argparse ``type``)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="Log trades to PostgreSQL with a connection per trade, then "
        "through an asyncpool pool, and compare.",
        epilog=f"Database: ${DSN_ENV} if set, else {LOCAL_DSN}, else a throwaway cluster if PostgreSQL is installed.",
    )
    parser.add_argument(
        "--trades",
        type=positive_int,
        default=2000,
        help="trades per phase (default: 2000)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=20,
        help="concurrent logging tasks (default: 20)",
    )
    parser.add_argument(
        "--pool-size",
        type=positive_int,
        default=10,
        help="connections in the pool (default: 10)",
    )
    parser.add_argument(
        "--local-dsn",
        default=os.environ.get(LOCAL_DSN_ENV, LOCAL_DSN),
        help=argparse.SUPPRESS,  # where to look for a local server
    )
    return parser.parse_args(argv)


async def run(dsn: str, args: argparse.Namespace) -> list[PhaseResult]:
    """Both phases against ``dsn``, inside a freshly created table."""
    trades = make_trades(args.trades)
    with TERMINATOR.guarding(asyncio.current_task()):
        async with trade_table(dsn):
            results = [
                await connect_per_trade(dsn, trades, args.concurrency),
                await pooled(dsn, trades, args.concurrency, args.pool_size),
            ]
            logged = await count_logged(dsn)
    expected = {"connect": args.trades, "pool": args.trades}
    if logged != expected:
        raise RuntimeError(f"rows written {logged} differ from trades logged {expected}")
    return results


class Terminator:
    """Turns SIGTERM into the same orderly stop as Ctrl-C.

    While the event loop runs, the signal cancels the main task (as asyncio
    itself does for the first Ctrl-C), so every ``finally`` runs with the
    loop still working: the table is dropped and the pool closed. Outside
    the loop it raises :exc:`KeyboardInterrupt`, so a throwaway cluster is
    stopped as well.
    """

    def __init__(self) -> None:
        self.task: asyncio.Task[object] | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        """Handle SIGTERM (the signature of a :func:`signal.signal` handler)."""
        task = self.task
        if task is None or task.done():
            raise KeyboardInterrupt
        # Raising inside the running loop would abandon whatever callback it
        # was in; cancelling lets the task unwind at its next await instead.
        task.get_loop().call_soon_threadsafe(task.cancel)

    @contextlib.contextmanager
    def guarding(self, task: asyncio.Task[object] | None) -> Iterator[None]:
        """Make SIGTERM cancel ``task`` for the duration of the body."""
        self.task = task
        try:
            yield
        finally:
            self.task = None


TERMINATOR = Terminator()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, TERMINATOR)
    try:
        with choose_database(args.local_dsn) as dsn:
            results = asyncio.run(run(dsn, args))
    except NoDatabaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_DATABASE
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    report(results, args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
