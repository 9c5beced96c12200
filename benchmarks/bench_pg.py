"""End-to-end pool benchmark against a real PostgreSQL server.

One operation is a whole lease: acquire a connection, run ``SELECT 1``,
release it. Many tasks repeat it as fast as they can on a pool of 10
connections, at 1, 10, 100 and 1000 concurrent tasks, once on the standard
asyncio loop and once on uvloop. The contenders:

* asyncpool, once per reset policy in :data:`ASYNCPOOL_RESET_POLICIES`, and
  the full reset forced inline (to show what resetting in the background is worth);
* asyncpool's drop-in ``asyncpool.asyncpg.create_pool`` (full reset, and the
  ``PoolConnectionProxy`` it lends, as asyncpg's pool does);
* ``asyncpg.create_pool`` with its defaults;
* ``psycopg_pool.AsyncConnectionPool``;
* a SQLAlchemy async engine (asyncpg driver, ``QueuePool`` of 10);
* the floor: a bare ``asyncio.Queue`` of 10 raw asyncpg connections, the
  least any pool can do (no reset, no health checks, no bookkeeping);
* the same queue with a reset round trip added to every cycle, once with
  asyncpool's full reset query and once with asyncpg's ``Connection.reset()``:
  what a pool that resets that way, inline, could reach with no logic of its own.

At each concurrency the contenders take turns: every contender's pool is
opened, then ``--rounds`` rounds (default 5) each run every contender once
for ``--seconds`` (default 1), each round starting one contender further
along than the one before, the first round of each after its warm-up.
Interleaving spreads slow drifts in the machine's speed over all
contenders alike, where running them one after the other would penalise
whichever ran during a slow spell. Each point reports operations per
second (the median over its rounds), its ratio to the floor's at the same
loop and concurrency (the median of the ratios of rounds of the same
number, which ran seconds apart), and the median and 99th
percentile of the time one operation took, from asking for a connection
until it was given back (each the median of the rounds' own). The JSON
file keeps every round's figures as well.

Each event-loop flavour runs in a fresh subprocess of this script, so one
loop's leftovers (caches, garbage, open sockets) cannot colour the other's.

Usage::

    python benchmarks/bench_pg.py                     # full run, ~4 minutes
    python benchmarks/bench_pg.py --quick             # smoke run, ~30 seconds
    python benchmarks/bench_pg.py --readme README.md  # also update README.md
    python benchmarks/bench_pg.py --contenders asyncpg,psycopg_pool,sqlalchemy

The server comes from ``ASYNCPOOL_BENCH_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``). Results go to
``benchmarks/results/pg.json`` and ``benchmarks/results/pg.png``.

A contender that fails (for example because it cannot be imported) is shown
with its error in place of numbers; the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
from _common import (
    machine_info,
    markdown_table,
    percentile,
    ratio_text,
    replace_readme_section,
)

from asyncpool.asyncpg import FULL_RESET_QUERY, mask_dsn

# -- what is measured ----------------------------------------------------------

#: asyncpool is run once per reset policy listed here, as
#: ``AsyncpgConnector(dsn, reset=POLICY)``.
ASYNCPOOL_RESET_POLICIES: tuple[str, ...] = ("full", "rollback")

POOL_SIZE = 10
CONCURRENCY_LEVELS: tuple[int, ...] = (1, 10, 100, 1000)
LOOPS: tuple[str, ...] = ("asyncio", "uvloop")
QUERY = "SELECT 1"

DSN_ENV = "ASYNCPOOL_BENCH_DSN"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

#: Unmeasured load on the server before the first contender of each loop.
SERVER_WARMUP = 1.0

DEFAULT_SECONDS = 1.0
DEFAULT_WARMUP = 0.5
DEFAULT_ROUNDS = 5
QUICK_SECONDS = 0.3
QUICK_WARMUP = 0.1
QUICK_ROUNDS = 1

#: Limits that keep a broken contender from hanging the whole run.
OPEN_TIMEOUT = 60.0
DRAIN_TIMEOUT = 60.0
CLOSE_TIMEOUT = 30.0
CHILD_TIMEOUT_MARGIN = 60.0

RESULTS_DIR = Path(__file__).resolve().parent / "results"
README_KEY = "pg"

#: Distributions whose versions are recorded with the results.
PACKAGES = ("asyncpool", "asyncpg", "psycopg", "psycopg-pool", "sqlalchemy", "uvloop")

FLOOR = "floor"

# -- contenders ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenPool:
    """A ready pool: ``cycle`` does one acquire/query/release, ``close`` ends it."""

    cycle: Callable[[], Awaitable[None]]
    close: Callable[[], Awaitable[None]]


Opener = Callable[[str], Awaitable[OpenPool]]


@dataclass(frozen=True, slots=True)
class Contender:
    """A pool implementation under test."""

    key: str  # short name for --contenders and the JSON file
    label: str  # name shown in tables and plots
    open: Opener


async def open_asyncpool(dsn: str, reset: str, background_reset: bool | None = None) -> OpenPool:
    """Open asyncpool's :class:`AsyncPool` over :class:`AsyncpgConnector`.

    ``background_reset=False`` forces the reset into the releasing caller,
    to show what resetting off its path is worth.
    """
    from asyncpool import AsyncPool
    from asyncpool.asyncpg import AsyncpgConnector

    pool = AsyncPool(
        AsyncpgConnector(dsn, reset=reset),
        min_size=POOL_SIZE,
        max_size=POOL_SIZE,
        background_reset=background_reset,
    )
    await pool.open(wait=True)

    async def cycle() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval(QUERY)

    return OpenPool(cycle, pool.close)


async def open_asyncpool_facade(dsn: str) -> OpenPool:
    """Open asyncpool's drop-in ``create_pool`` (full reset; lends asyncpg's
    ``PoolConnectionProxy``), as a user switching from asyncpg gets it."""
    from asyncpool.asyncpg import create_pool

    pool = await create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)

    async def cycle() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval(QUERY)

    return OpenPool(cycle, pool.close)


async def open_asyncpg(dsn: str) -> OpenPool:
    """Open ``asyncpg.create_pool`` with its defaults."""
    pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)

    async def cycle() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval(QUERY)

    return OpenPool(cycle, pool.close)


async def open_psycopg_pool(dsn: str) -> OpenPool:
    """Open ``psycopg_pool.AsyncConnectionPool`` with its defaults."""
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, open=False)
    await pool.open(wait=True)

    async def cycle() -> None:
        async with pool.connection() as conn:
            cursor = await conn.execute(QUERY)
            await cursor.fetchone()

    return OpenPool(cycle, pool.close)


async def open_sqlalchemy(dsn: str) -> OpenPool:
    """Open a SQLAlchemy async engine on asyncpg (``pool_size=10, max_overflow=0``)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        raise ValueError("SQLAlchemy needs a postgresql:// URL, not a keyword DSN")
    engine = create_async_engine(f"postgresql+asyncpg://{rest}", pool_size=POOL_SIZE, max_overflow=0)
    statement = text(QUERY)
    # The engine connects lazily; open all connections now, as the other
    # pools do, so that the first measurement does not pay for it.
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(POOL_SIZE):
            await stack.enter_async_context(engine.connect())

    async def cycle() -> None:
        async with engine.connect() as conn:
            result = await conn.execute(statement)
            result.scalar()

    return OpenPool(cycle, engine.dispose)


async def open_floor(dsn: str, reset: str | None = None) -> OpenPool:
    """Open the floor: an ``asyncio.Queue`` of raw asyncpg connections.

    ``reset`` adds a reset round trip to every cycle, with no pool logic
    around it: ``"full"`` runs asyncpool's full reset query, ``"asyncpg"``
    asyncpg's own ``Connection.reset()``. These bound what any pool that
    resets that way can reach.
    """
    connections = [await asyncpg.connect(dsn) for _ in range(POOL_SIZE)]
    queue: asyncio.Queue[asyncpg.Connection] = asyncio.Queue()
    for conn in connections:
        queue.put_nowait(conn)

    async def cycle() -> None:
        conn = await queue.get()
        try:
            await conn.fetchval(QUERY)
        finally:
            queue.put_nowait(conn)

    async def close() -> None:
        await asyncio.gather(*(conn.close() for conn in connections))

    if reset is None:
        return OpenPool(cycle, close)

    async def run_full_reset(conn: asyncpg.Connection) -> None:
        await conn.execute(FULL_RESET_QUERY)

    async def run_asyncpg_reset(conn: asyncpg.Connection) -> None:
        await conn.reset()

    reset_step = {"full": run_full_reset, "asyncpg": run_asyncpg_reset}[reset]

    async def cycle_with_reset() -> None:
        conn = await queue.get()
        try:
            await conn.fetchval(QUERY)
            await reset_step(conn)
        finally:
            queue.put_nowait(conn)

    return OpenPool(cycle_with_reset, close)


def all_contenders() -> list[Contender]:
    """Return every contender, the floor first."""
    return [
        Contender(FLOOR, "asyncio.Queue (floor)", open_floor),
        *(
            Contender(
                f"asyncpool-{policy}",
                f"asyncpool (reset={policy})",
                partial(open_asyncpool, reset=policy),
            )
            for policy in ASYNCPOOL_RESET_POLICIES
        ),
        Contender(
            "asyncpool-full-inline",
            "asyncpool (reset=full, inline)",
            partial(open_asyncpool, reset="full", background_reset=False),
        ),
        Contender("asyncpool-facade", "asyncpool.asyncpg.create_pool", open_asyncpool_facade),
        Contender("floor-full", "asyncio.Queue + full reset query", partial(open_floor, reset="full")),
        Contender("asyncpg", "asyncpg.create_pool", open_asyncpg),
        Contender("floor-asyncpg", "asyncio.Queue + asyncpg's reset()", partial(open_floor, reset="asyncpg")),
        Contender("psycopg_pool", "psycopg_pool", open_psycopg_pool),
        Contender("sqlalchemy", "SQLAlchemy (asyncpg)", open_sqlalchemy),
    ]


def select_contenders(spec: str | None) -> list[Contender]:
    """Return the contenders named in ``spec`` (comma-separated), plus the floor.

    A name selects the contender with that key, or all whose key starts
    with ``name-``: ``asyncpool`` selects every reset policy.
    """
    contenders = all_contenders()
    if spec is None:
        return contenders
    wanted = {name.strip() for name in spec.split(",") if name.strip()}
    unknown = {name for name in wanted if not any(c.key == name or c.key.startswith(name + "-") for c in contenders)}
    if unknown:
        keys = ", ".join(c.key for c in contenders)
        raise SystemExit(f"unknown contender(s) {', '.join(sorted(unknown))}; known: {keys}")
    return [
        c
        for c in contenders
        if c.key == FLOOR or c.key in wanted or any(c.key.startswith(name + "-") for name in wanted)
    ]


# -- measuring (runs in the child process) ----------------------------------------

#: The error of a point left out because its contender failed at a lower level.
NOT_RUN = "not run (an earlier level failed)"


@dataclass(slots=True)
class Round:
    """One round of one point: the contender measured once for ``--seconds``."""

    ops: int
    seconds: float
    ops_per_s: float
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    #: Throughput as a ratio of the floor's in the round of the same number.
    ratio_to_floor: float | None = None


@dataclass(slots=True)
class Point:
    """A contender at one concurrency on one loop, over all its rounds.

    ``ops_per_s`` and the percentiles are medians of the rounds' figures,
    ``max_ms`` the largest of them, ``ops`` and ``seconds`` their totals;
    ``rounds`` keeps each round's own figures. A point with an ``error`` has
    no figures (its rounds up to the failure are still kept).
    """

    loop: str
    contender: str
    label: str
    concurrency: int
    ops: int = 0
    seconds: float = 0.0
    ops_per_s: float | None = None
    ratio_to_floor: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    error: str | None = None
    rounds: list[Round] = field(default_factory=list)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Point:
        """Rebuild a point from its :func:`dataclasses.asdict` form."""
        return cls(**{**raw, "rounds": [Round(**r) for r in raw.get("rounds", ())]})

    def summarise(self) -> None:
        """Set the point's figures from its rounds."""
        rounds = self.rounds
        if not rounds:
            return
        self.ops = sum(r.ops for r in rounds)
        self.seconds = sum(r.seconds for r in rounds)
        self.ops_per_s = statistics.median(r.ops_per_s for r in rounds)
        self.p50_ms = _median(r.p50_ms for r in rounds)
        self.p90_ms = _median(r.p90_ms for r in rounds)
        self.p99_ms = _median(r.p99_ms for r in rounds)
        self.p999_ms = _median(r.p999_ms for r in rounds)
        self.max_ms = max((r.max_ms for r in rounds if r.max_ms is not None), default=None)


class RoundFailed(Exception):
    """A round could not be measured; the message says why."""


class _Window:
    """Shared state of one round: whether to record, whether to stop."""

    def __init__(self) -> None:
        self.recording = False
        self.stopping = False
        self.latencies: list[float] = []


async def measure(
    cycle: Callable[[], Awaitable[None]],
    concurrency: int,
    *,
    warmup: float,
    seconds: float,
) -> Round:
    """Run ``cycle`` from ``concurrency`` tasks for one round; return its figures.

    The tasks run through the warm-up (if any) and the measuring window
    without a break; only operations that finish inside the window count.
    Afterwards the tasks finish the operation they are in, so the pool is
    left idle and whole for the next round. Raises :exc:`RoundFailed` if a
    task failed or did not finish in time.
    """
    window = _Window()

    async def worker() -> None:
        clock = time.perf_counter
        latencies = window.latencies
        while not window.stopping:
            started = clock()
            await cycle()
            if window.recording:
                latencies.append(clock() - started)

    gc.collect()
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        window.recording = True
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        window.recording = False
        elapsed = time.perf_counter() - started
        window.stopping = True
        done, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT)
    finally:
        window.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if pending:
        raise RoundFailed(f"{len(pending)} task(s) still running {DRAIN_TIMEOUT:.0f} s after the end")
    failures = [exc for task in done if (exc := task.exception()) is not None]
    if failures:
        raise RoundFailed(_describe(failures[0]))
    latencies_ms = [value * 1000.0 for value in window.latencies]
    result = Round(ops=len(latencies_ms), seconds=elapsed, ops_per_s=len(latencies_ms) / elapsed)
    if latencies_ms:
        result.p50_ms = percentile(latencies_ms, 50)
        result.p90_ms = percentile(latencies_ms, 90)
        result.p99_ms = percentile(latencies_ms, 99)
        result.p999_ms = percentile(latencies_ms, 99.9)
        result.max_ms = max(latencies_ms)
    return result


async def run_loop(
    loop_name: str,
    dsn: str,
    contenders: Sequence[Contender],
    levels: Sequence[int],
    *,
    warmup: float,
    seconds: float,
    rounds: int,
) -> list[Point]:
    """Measure every contender at every level on the running loop.

    At each level every contender's pool is opened, then the contenders
    take turns: ``rounds`` rounds, each running every contender once for
    ``seconds``, each round starting one contender further along, the
    first preceded by each contender's warm-up. Interleaving spreads slow drifts in the machine's speed (other
    load, the server sharing the CPU) over all contenders alike, where
    running them one after the other would penalise whichever ran during a
    slow spell. A contender that fails is dropped for the rest of the run:
    its pool may be wedged.
    """
    await warm_up_server(dsn, loop_name, seconds=max(SERVER_WARMUP, warmup))
    points = {(c.key, n): Point(loop_name, c.key, c.label, n) for c in contenders for n in levels}
    dropped: dict[str, str] = {}  # contender key -> the error for its remaining levels
    for n in levels:
        pools: list[tuple[Contender, OpenPool]] = []
        try:
            for contender in contenders:
                point = points[contender.key, n]
                if contender.key in dropped:
                    point.error = dropped[contender.key]
                    continue
                try:
                    pools.append((contender, await asyncio.wait_for(contender.open(dsn), OPEN_TIMEOUT)))
                except Exception as exc:
                    point.error = dropped[contender.key] = _describe(exc)
                    log(f"[{loop_name}] {contender.label}: {point.error}")
            for number in range(1, rounds + 1):
                # Each round starts one contender further along, so that none
                # always runs right after the same neighbour or first.
                shift = (number - 1) % len(pools) if pools else 0
                for contender, pool in pools[shift:] + pools[:shift]:
                    if contender.key in dropped:
                        continue
                    point = points[contender.key, n]
                    tag = f"[{loop_name}] {n:>5} tasks  round {number}/{rounds}  {contender.label:<27}"
                    try:
                        result = await measure(pool.cycle, n, warmup=warmup if number == 1 else 0.0, seconds=seconds)
                    except RoundFailed as exc:
                        point.error = f"round {number} of {rounds}: {exc}" if rounds > 1 else str(exc)
                        dropped[contender.key] = NOT_RUN
                        log(f"{tag} error: {point.error}")
                    else:
                        point.rounds.append(result)
                        log(f"{tag} {_figures(result)}")
        finally:
            for contender, pool in pools:
                try:
                    await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
                except Exception as exc:
                    log(f"[{loop_name}] {contender.label}: close failed: {_describe(exc)}")
        for contender, _ in pools:
            point = points[contender.key, n]
            if point.error is None:
                point.summarise()
                if rounds > 1:
                    log(f"[{loop_name}] {n:>5} tasks  median       {contender.label:<27} {_figures(point)}")
    return [points[c.key, n] for c in contenders for n in levels]


async def warm_up_server(dsn: str, loop_name: str, *, seconds: float) -> None:
    """Exercise the server and this process before anything is measured.

    Without it the first contender pays for cold server caches, a cold CPU
    frequency governor and the interpreter's first calls, and looks slower
    than it is. Failures are left for the contenders to report.
    """
    try:
        pool = await asyncio.wait_for(open_floor(dsn), OPEN_TIMEOUT)
    except Exception as exc:
        log(f"[{loop_name}] server warm-up skipped: {_describe(exc)}")
        return
    try:
        await measure(pool.cycle, POOL_SIZE, warmup=0.0, seconds=seconds)
    except RoundFailed as exc:
        log(f"[{loop_name}] server warm-up failed: {exc}")
    finally:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)


def child_main(args: argparse.Namespace) -> int:
    """Measure on one loop flavour and write the points to ``--result-file``."""
    contenders = select_contenders(args.contenders)
    coro = run_loop(
        args.child,
        args.dsn,
        contenders,
        args.levels,
        warmup=args.warmup,
        seconds=args.seconds,
        rounds=args.rounds,
    )
    if args.child == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            points = runner.run(coro)
    else:
        points = asyncio.run(coro)
    Path(args.result_file).write_text(json.dumps([asdict(p) for p in points]))
    return 0


# -- orchestrating (runs in the parent process) -------------------------------------


def run_child(loop_name: str, args: argparse.Namespace) -> list[Point]:
    """Run one loop flavour in a fresh interpreter and collect its points."""
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        result_file = Path(tmp) / "points.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            loop_name,
            "--result-file",
            str(result_file),
            "--seconds",
            str(args.seconds),
            "--warmup",
            str(args.warmup),
            "--rounds",
            str(args.rounds),
            "--concurrency",
            ",".join(map(str, args.levels)),
        ]
        if args.contenders is not None:
            command += ["--contenders", args.contenders]
        # Enough for every contender to hit every one of its time limits: it
        # is opened and closed at every level, but dropped after a failure.
        levels = len(args.levels)
        per_contender = (
            levels * (args.warmup + args.rounds * args.seconds + CLOSE_TIMEOUT) + OPEN_TIMEOUT + DRAIN_TIMEOUT
        )
        contenders = len(select_contenders(args.contenders))
        budget = contenders * per_contender + SERVER_WARMUP + CHILD_TIMEOUT_MARGIN
        env = {**os.environ, DSN_ENV: args.dsn}
        try:
            completed = subprocess.run(command, env=env, timeout=budget, check=False)
        except subprocess.TimeoutExpired:
            error = f"the {loop_name} run did not finish within {budget:.0f} s"
        else:
            if completed.returncode == 0 and result_file.exists():
                return [Point.from_json(raw) for raw in json.loads(result_file.read_text())]
            error = f"the {loop_name} run failed with exit status {completed.returncode}"
    log(error)
    return [
        Point(loop_name, c.key, c.label, n, error=error)
        for c in select_contenders(args.contenders)
        for n in args.levels
    ]


def add_ratios(points: Sequence[Point]) -> None:
    """Set each point's and each round's throughput as a ratio of the floor's."""
    floors = {(p.loop, p.concurrency): p for p in points if p.contender == FLOOR and p.error is None}
    for point in points:
        floor = floors.get((point.loop, point.concurrency))
        if floor is None:
            continue
        for mine, base in zip(point.rounds, floor.rounds, strict=False):
            if base.ops_per_s:
                mine.ratio_to_floor = mine.ops_per_s / base.ops_per_s
        point.ratio_to_floor = _paired_ratio(point, floor)


def _paired_ratio(point: Point, base: Point) -> float | None:
    """``point``'s throughput as a ratio of ``base``'s: the median of the
    ratios of rounds of the same number, which ran a few seconds apart.

    A ratio of the two medians would compare figures from different rounds,
    and a machine whose speed drifts between rounds moves it by more than
    the differences measured here.
    """
    if point.error is not None or base.error is not None or point.ops_per_s is None or not base.ops_per_s:
        return None
    if len(point.rounds) != len(base.rounds) or not all(other.ops_per_s for other in base.rounds):
        return point.ops_per_s / base.ops_per_s
    return statistics.median(
        mine.ops_per_s / other.ops_per_s for mine, other in zip(point.rounds, base.rounds, strict=True)
    )


async def server_version(dsn: str) -> str:
    """Return the server's ``server_version``; raise if it cannot be reached."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        version: str = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return version


def collect_machine_info(server: str) -> dict[str, str]:
    """Machine, interpreter, library and server versions for the record."""
    info = machine_info(PACKAGES)
    if info.get("asyncpool") == "not installed":
        # Run from a checkout without installing: take the package's own word.
        try:
            import asyncpool

            info["asyncpool"] = str(getattr(asyncpool, "__version__", "unknown"))
        except Exception as exc:
            info["asyncpool"] = f"not importable ({type(exc).__name__})"
    info["postgresql"] = server
    return info


def machine_line(info: dict[str, str]) -> str:
    """Summarise :func:`collect_machine_info` in one line."""
    versions = " · ".join(
        f"{name} {info[key]}"
        for name, key in (
            ("asyncpool", "asyncpool"),
            ("asyncpg", "asyncpg"),
            ("psycopg", "psycopg"),
            ("psycopg_pool", "psycopg-pool"),
            ("SQLAlchemy", "sqlalchemy"),
            ("uvloop", "uvloop"),
        )
    )
    return (
        f"{info['cpu']}, {info['cores']} cores · {info['os']} · "
        f"Python {info['python']} · "
        f"PostgreSQL {info['postgresql']} · {versions}"
    )


def _table_order(points: Sequence[Point]) -> list[Point]:
    order = {key: i for i, key in enumerate(c.key for c in all_contenders())}
    return sorted(
        points,
        key=lambda p: (
            LOOPS.index(p.loop) if p.loop in LOOPS else len(LOOPS),
            p.concurrency,
            order.get(p.contender, len(order)),
        ),
    )


def results_table(points: Sequence[Point]) -> str:
    """Render all points as a Markdown table, grouped by loop and concurrency.

    A point that failed shows ``error`` in place of numbers; the errors
    themselves are listed once each below the table.
    """
    rows = []
    for p in _table_order(points):
        if p.error is not None or p.ops_per_s is None:
            rows.append((p.loop, p.concurrency, p.label, "error", "", "", ""))
            continue
        rows.append(
            (
                p.loop,
                p.concurrency,
                p.label,
                f"{p.ops_per_s:,.0f}",
                f"{p.ratio_to_floor:.2f}x" if p.ratio_to_floor is not None else "",
                _ms(p.p50_ms),
                _ms(p.p99_ms),
            )
        )
    table = markdown_table(
        ("loop", "tasks", "contender", "ops/s", "vs floor", "p50 ms", "p99 ms"),
        rows,
        align="lrlrrrr",
    )
    return "\n\n".join([table, *([errors] if (errors := error_list(points)) else [])])


def error_list(points: Sequence[Point]) -> str:
    """One Markdown bullet per distinct (contender, error), saying where it hit."""
    where: dict[tuple[str, str], list[Point]] = {}
    for p in _table_order(points):
        if p.error is not None:
            where.setdefault((p.label, p.error), []).append(p)
    levels = {p.concurrency for p in points}
    lines = []
    for (label, error), failed in where.items():
        places = []
        for loop_name in dict.fromkeys(p.loop for p in failed):
            hit = [p.concurrency for p in failed if p.loop == loop_name]
            if set(hit) == levels:
                places.append(loop_name)
            else:
                places.append(f"{loop_name} at {', '.join(map(str, hit))} tasks")
        lines.append(f"- {label}, on {', '.join(places)}: {_shorten(error, 200)}")
    return "\n".join(lines)


def plot(points: Sequence[Point], info: dict[str, str], path: Path, *, rounds: int) -> None:
    """Save ops/s against concurrency, one line per contender, one panel per loop.

    Each marker is the point's ops/s, the median of its ``rounds`` rounds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import StrMethodFormatter

    loops = [name for name in LOOPS if any(p.loop == name for p in points)]
    contenders = [c for c in all_contenders() if any(p.contender == c.key for p in points)]
    # Fixed colours, so a contender that failed on one loop only does not
    # shift the colours of the others.
    palette = matplotlib.colormaps["tab10"]
    colours: dict[str, Any] = {c.key: palette(i % palette.N) for i, c in enumerate(contenders) if c.key != FLOOR}
    colours[FLOOR] = "black"
    levels = sorted({p.concurrency for p in points})
    top = max((p.ops_per_s or 0.0 for p in points), default=0.0)

    figure, axes = plt.subplots(1, len(loops), figsize=(6 * len(loops), 5.2), sharey=True, squeeze=False)
    for ax, loop_name in zip(axes[0], loops, strict=True):
        for contender in contenders:
            series = sorted(
                (p.concurrency, p.ops_per_s)
                for p in points
                if p.loop == loop_name and p.contender == contender.key and p.ops_per_s is not None
            )
            if series:
                ax.plot(
                    [x for x, _ in series],
                    [y for _, y in series],
                    marker="o",
                    linestyle="--" if contender.key.startswith(FLOOR) else "-",
                    color=colours[contender.key],
                    label=contender.label,
                )
        ax.set_xscale("log")
        ax.set_xticks(levels, [str(n) for n in levels])
        ax.minorticks_off()
        ax.set_title(loop_name)
        ax.set_xlabel("concurrent tasks")
        ax.grid(visible=True, alpha=0.3)
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axes[0][0].set_ylim(0, top * 1.08 or 1.0)
    axes[0][0].set_ylabel("operations per second (higher is better)")
    handles, labels = [], []
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False)
    figure.suptitle(
        f"acquire → {QUERY} → release, pool of {POOL_SIZE}"
        + (f", median of {rounds} interleaved rounds" if rounds > 1 else "")
        + f" · {info['cpu']}, {info['cores']} cores · PostgreSQL {info['postgresql']}",
        fontsize="medium",
    )
    rows_of_legend = -(-len(labels) // 4)
    figure.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def caption(settings: dict[str, Any]) -> str:
    """Say in one line what the table's figures are and how they were measured."""
    seconds, warmup, rounds = settings["seconds"], settings["warmup"], settings["rounds"]
    if rounds > 1:
        how = (
            f"Figures are medians of {rounds} interleaved rounds: at each concurrency the contenders "
            f"take turns, {seconds:g} s each, {rounds} times over, after one {warmup:g} s warm-up each; "
            "ops/s is the median of the rounds' ops/s, p50 and p99 the medians of the rounds' p50 and p99, "
            "and each ratio (to the floor, and between pools in the targets) the median of the ratios "
            "of rounds of the same number"
        )
    else:
        how = f"One {seconds:g} s round per point after a {warmup:g} s warm-up"
    quick = " (quick smoke run: numbers are rough)" if settings["quick"] else ""
    return (
        f"acquire → `{QUERY}` → release on a pool of {POOL_SIZE} connections; "
        f"latency is per operation, acquire through release. {how}{quick}."
    )


def targets(points: Sequence[Point]) -> str:
    """The targets for this benchmark, checked against this run's figures."""
    found = {(p.loop, p.contender, p.concurrency): p for p in points if p.ops_per_s is not None}

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = ["Targets, checked against this run:", ""]
    for loop in sorted({p.loop for p in points}, key=lambda name: LOOPS.index(name) if name in LOOPS else 99):
        parts = []
        concurrencies = sorted({p.concurrency for p in points})
        rollback = [
            (found[loop, "asyncpool-rollback", n].ratio_to_floor, n)
            for n in concurrencies
            if (loop, "asyncpool-rollback", n) in found
        ]
        known = [(r, n) for r, n in rollback if r is not None]
        if known:
            worst, n = min(known)
            parts.append(
                "rollback policy at least 0.9x the floor at every concurrency: "
                f"lowest {ratio_text(worst, 0.9)} ({n} task{'s' if n != 1 else ''}), {verdict(worst >= 0.9)}"
            )
        reaches = []
        for n in concurrencies:
            full, bound = found.get((loop, "asyncpool-full", n)), found.get((loop, "floor-full", n))
            if full and bound and (reach := _paired_ratio(full, bound)) is not None:
                reaches.append((reach, n))
        if reaches:
            worst, n = min(reaches)
            parts.append(
                "full reset at least 0.95x a bare queue running the same reset query in the caller, at every "
                f"concurrency: lowest {ratio_text(worst, 0.95)} ({n} task{'s' if n != 1 else ''}), "
                f"{verdict(worst >= 0.95)}"
            )
        facade = []
        for n in concurrencies:
            proxied, direct = found.get((loop, "asyncpool-facade", n)), found.get((loop, "asyncpool-full", n))
            if proxied and direct and (ratio := _paired_ratio(proxied, direct)) is not None:
                facade.append((ratio, n))
        if facade:
            worst, n = min(facade)
            parts.append(
                "`create_pool` (lends asyncpg's proxy) against `AsyncPool` with the same reset: lowest "
                f"{worst:.2f}x ({n} task{'s' if n != 1 else ''}) (no target: the cost of the proxy)"
            )
        spreads = []
        for key in ("asyncpool-full", "asyncpool-rollback"):
            point = found.get((loop, key, 1000))
            if point and point.p50_ms and point.p99_ms:
                spreads.append(point.p99_ms / point.p50_ms)
        if spreads:
            worst = max(spreads)
            parts.append(f"p99 at most 3x p50 at 1000 tasks: highest {ratio_text(worst, 3.0)}, {verdict(worst <= 3.0)}")
        if parts:
            lines.append(f"- {loop}: " + "; ".join(parts))
    return "\n".join(lines)


def readme_section(table: str, info: dict[str, str], settings: dict[str, Any], image: str, checks: str) -> str:
    """Compose the text that goes between the README markers."""
    return "\n".join(
        [
            caption(settings),
            "",
            table,
            "",
            checks,
            "",
            f"Measured on: {machine_line(info)}.",
            "",
            f"![ops/s against concurrent tasks]({image})",
        ]
    )


def parent_main(args: argparse.Namespace) -> int:
    """Run every loop flavour, then report, save and plot."""
    log(f"server: {mask_dsn(args.dsn)}")
    try:
        server = asyncio.run(server_version(args.dsn))
    except Exception as exc:
        print(
            f"error: cannot reach PostgreSQL at {mask_dsn(args.dsn)}: "
            f"{_describe(exc)}\n"
            f"Start a server there or set {DSN_ENV}.",
            file=sys.stderr,
        )
        return 2
    info = collect_machine_info(server)

    points: list[Point] = []
    for loop_name in args.loops:
        points.extend(run_child(loop_name, args))
    add_ratios(points)

    settings: dict[str, Any] = {
        "seconds": args.seconds,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "quick": args.quick,
        "pool_size": POOL_SIZE,
        "concurrency": list(args.levels),
        "loops": list(args.loops),
        "query": QUERY,
        "asyncpool_reset_policies": list(ASYNCPOOL_RESET_POLICIES),
    }
    table = results_table(points)
    print()
    print(caption(settings))
    print()
    print(table)
    print()
    print(f"Measured on: {machine_line(info)}")
    checks = targets(points)
    print()
    print(checks)

    output_dir: Path = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "pg.json"
    png_path = output_dir / "pg.png"
    report = {
        "benchmark": "pg",
        "description": f"acquire -> {QUERY} -> release, pool of {POOL_SIZE}",
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "machine": info,
        "results": [asdict(p) for p in points],
    }
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {json_path}")
    try:
        plot(points, info, png_path, rounds=args.rounds)
    except ImportError as exc:
        log(f"no plot: {exc}")
    else:
        log(f"wrote {png_path}")

    if args.readme is not None:
        readme = Path(args.readme)
        image = Path(os.path.relpath(png_path.resolve(), readme.resolve().parent)).as_posix()
        try:
            replace_readme_section(readme, README_KEY, readme_section(table, info, settings, image, checks))
        except (OSError, ValueError) as exc:
            print(f"error: cannot update {readme}: {exc}", file=sys.stderr)
            return 1
        log(f"updated the bench:{README_KEY} section of {readme}")
    return 0


# -- small helpers --------------------------------------------------------------------


def log(message: str) -> None:
    """Print a progress line on stderr (the results go to stdout)."""
    print(message, file=sys.stderr, flush=True)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    if value < 10:
        return f"{value:.3f}"
    if value < 100:
        return f"{value:.2f}"
    return f"{value:.1f}"


def _figures(figures: Round | Point) -> str:
    ops = "" if figures.ops_per_s is None else f"{figures.ops_per_s:,.0f}"
    return f"{ops:>9} ops/s  p50 {_ms(figures.p50_ms):>7} ms  p99 {_ms(figures.p99_ms):>7} ms"


def _median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be integers of at least 1")
    return levels


def _loops(text: str) -> tuple[str, ...]:
    loops = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = set(loops) - set(LOOPS)
    if not loops or unknown:
        raise argparse.ArgumentTypeError(f"loops must be among {', '.join(LOOPS)}")
    return loops


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line and settle the defaults that depend on --quick."""
    parser = argparse.ArgumentParser(
        description="Benchmark acquire -> SELECT 1 -> release on PostgreSQL: asyncpool against other pools.",
        epilog=f"Server: ${DSN_ENV} (default {DEFAULT_DSN}).",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help=f"measuring time per round in seconds (default {DEFAULT_SECONDS:g}; {QUICK_SECONDS:g} with --quick)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help=(
            "rounds per concurrency level, the contenders taking turns in each; the figures reported "
            f"are medians over the rounds (default {DEFAULT_ROUNDS}; {QUICK_ROUNDS} with --quick)"
        ),
    )
    parser.add_argument(
        "--warmup",
        type=float,
        help=(
            "warm-up of each contender before its first round at each level, in seconds "
            f"(default {DEFAULT_WARMUP:g}; {QUICK_WARMUP:g} with --quick)"
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--concurrency",
        dest="levels",
        type=_levels,
        default=CONCURRENCY_LEVELS,
        help="comma-separated task counts (default: " + ",".join(map(str, CONCURRENCY_LEVELS)) + ")",
    )
    parser.add_argument(
        "--loops",
        type=_loops,
        default=LOOPS,
        help="comma-separated event loops (default: asyncio,uvloop)",
    )
    parser.add_argument(
        "--contenders",
        help="comma-separated contenders to run (the floor always runs): " + ", ".join(c.key for c in all_contenders()),
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where pg.json and pg.png go (default: benchmarks/results)",
    )
    parser.add_argument(
        "--readme",
        metavar="PATH",
        help=f"replace the bench:{README_KEY} section of this Markdown file",
    )
    # Internal: set when this script re-runs itself for one loop flavour.
    parser.add_argument("--child", choices=LOOPS, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = QUICK_SECONDS if args.quick else DEFAULT_SECONDS
    if args.warmup is None:
        args.warmup = QUICK_WARMUP if args.quick else DEFAULT_WARMUP
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if args.seconds <= 0 or args.warmup < 0 or args.rounds < 1:
        parser.error("--seconds must be positive, --warmup not negative and --rounds at least 1")
    if args.child is not None and args.result_file is None:
        parser.error("--child needs --result-file")
    args.dsn = os.environ.get(DSN_ENV, DEFAULT_DSN)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = parse_args(argv)
    if args.child is not None:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
