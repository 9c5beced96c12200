"""The soak: many tasks, a network fault every 100 ms, random cancellations.

Each pool under test (asyncpool, asyncpg's own pool, psycopg_pool) serves the
same load through a fault-injecting TCP proxy (``tests/faultproxy.py``) in
front of PostgreSQL, one after the other, for the same time and with the same
schedule of faults drawn from one seed:

- a backend of the pool terminated by ``pg_terminate_backend``;
- every open link reset (``cut``);
- the network stalled: nothing forwarded, sockets open (50-300 ms);
- latency added to every packet (5-30 ms, for half a second);
- new connects refused (0.2-1 s).

Every 10 ms a random task is cancelled and replaced. Each task loops: acquire
with a random timeout (0.05-2 s), run ``SELECT pg_sleep(...)`` (0, 1 or 3 ms).

What reaches a caller is sorted by what it means:

``timeout``
    the acquire's deadline passed (the pool said no in time);
``died in hands``
    the query failed because the connection died while it ran (the server
    ended the session, or the network dropped it, after the query was sent):
    nothing a pool can prevent;
``lent broken``
    the query failed before anything was sent, because the connection was
    already closed, half-used or in an unknown state when the caller got it:
    a pool's failure;
``internal``
    asyncpg's ``InternalClientError``: a pool's failure too;
``release raised``
    giving the connection back raised (a pool's failure to clean up, passed
    on to a caller whose work was done);
``other``
    anything else.

Besides, for asyncpool: acquires that outlived their timeout by more than a
margin, the pool's size leaving its bounds, a slot still in use or a waiter
still queued once every task has ended, a connection closed twice, and a
backend of the pool left on the server after ``close()`` are failures.

Run it: ``nox -s soak`` (60 s per pool, 1000 tasks, a pool of 20, all three
pools, the summary written into the README), or
``python benchmarks/soak.py --duration 10 --pools asyncpool``. The fault schedule
is drawn from ``--seed`` (printed), so a run can be replayed; what the faults
hit still depends on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import asyncpg
from _common import machine_info, markdown_table, percentile, replace_readme_section

from asyncpool import AsyncPool, Connector, PoolTimeout
from asyncpool.asyncpg import SessionEndedError

# The fault proxy is the test suite's; run as a script, the repository's
# root is not on the path yet.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.counting import CountingConnector
from tests.faultproxy import FaultProxy

__all__ = ["SoakReport", "main", "run_soak"]

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
POOLS = ("asyncpool", "asyncpg", "psycopg")
FAULTS = ("terminate", "cut", "stall", "latency", "refuse")
_FAULT_WEIGHTS = (0.35, 0.1, 0.2, 0.2, 0.15)
#: An acquire may outlive its timeout by this much before it counts as
#: overdue: the event loop of a thousand tasks runs timers late.
OVERRUN_MARGIN = 0.25


# -- what reaches callers --------------------------------------------------------


def classify(exc: BaseException) -> tuple[str, str]:
    """What an error raised by a lease's first query means: a category (see
    the module docstring) and a short name for the report."""
    name = type(exc).__name__
    if isinstance(exc, asyncpg.InternalClientError):
        return "internal", f"{name}: {exc}"
    if isinstance(exc, SessionEndedError):
        return ("lent broken" if not exc.query_sent else "died in hands"), name
    if isinstance(exc, asyncpg.InterfaceError):
        if str(exc) == "cannot perform operation: connection is closed":
            # Closed between the round trips of one call (asyncpg prepares a
            # new statement, then runs it): it died in the caller's hands.
            return "died in hands", f"{name}: closed mid-call"
        # "connection is closed" (before the call began), "another operation
        # is in progress": it was unusable when the caller got it.
        return "lent broken", f"{name}: {exc}"
    if isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, OSError)):
        return "died in hands", name
    psycopg_kind = _classify_psycopg(exc)
    if psycopg_kind is not None:
        return psycopg_kind
    return "other", f"{name}: {exc}"


def _classify_psycopg(exc: BaseException) -> tuple[str, str] | None:
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(exc, psycopg.Error):
        return None
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, psycopg.OperationalError):
        # psycopg checks the connection before it sends anything.
        if "the connection is closed" in text or "the connection is lost" in text:
            return "lent broken", f"{name}: {text.splitlines()[0]}"
        return "died in hands", name
    if isinstance(exc, psycopg.InterfaceError):
        return "lent broken", f"{name}: {text.splitlines()[0]}"
    return None


# -- the pools under test ----------------------------------------------------------


class Contender(Protocol):
    """One pool, driven the same way as the others."""

    name: str
    timeout_errors: tuple[type[BaseException], ...]

    async def open(self) -> None: ...

    def lease(self, timeout: float) -> contextlib.AbstractAsyncContextManager[Callable[[float], Awaitable[object]]]:
        """Acquire within ``timeout``; yields ``query(sleep_seconds)``."""
        ...

    def bounds(self) -> tuple[int, int]:
        """The pool's size now, and its maximum."""
        ...

    def unsettled(self) -> str | None:
        """Once no task runs: what is still lent or queued, if anything."""
        ...

    async def close(self) -> None: ...


class AsyncpoolContender:
    name = "asyncpool"
    timeout_errors: tuple[type[BaseException], ...] = (PoolTimeout,)

    def __init__(self, dsn: str, size: int, app_name: str) -> None:
        self.connector = CountingConnector(dsn, server_settings={"application_name": app_name})
        connector: Connector[Any] = self.connector
        self.pool: AsyncPool[Any] = AsyncPool(connector, min_size=size, max_size=size, timeout=2.0, name="soak")

    async def open(self) -> None:
        await self.pool.open(wait=True)

    @contextlib.asynccontextmanager
    async def lease(self, timeout: float) -> AsyncIterator[Callable[[float], Awaitable[object]]]:
        async with self.pool.acquire(timeout=timeout) as conn:
            yield lambda delay: conn.fetchval("SELECT pg_sleep($1)", delay)

    def bounds(self) -> tuple[int, int]:
        stats = self.pool.stats()
        if not stats.in_use + stats.idle <= stats.size:
            return stats.max_size + 1, stats.max_size  # reported as out of bounds
        return stats.size, stats.max_size

    def unsettled(self) -> str | None:
        stats = self.pool.stats()
        if stats.in_use or stats.waiting:
            return f"in_use={stats.in_use} waiting={stats.waiting}"
        return None

    async def close(self) -> None:
        await self.pool.close(timeout=5)


class AsyncpgContender:
    name = "asyncpg"
    timeout_errors: tuple[type[BaseException], ...] = (asyncio.TimeoutError,)

    def __init__(self, dsn: str, size: int, app_name: str) -> None:
        self._args = (dsn, size, app_name)
        self.pool: Any = None

    async def open(self) -> None:
        dsn, size, app_name = self._args
        self.pool = await asyncpg.create_pool(
            dsn, min_size=size, max_size=size, server_settings={"application_name": app_name}
        )

    @contextlib.asynccontextmanager
    async def lease(self, timeout: float) -> AsyncIterator[Callable[[float], Awaitable[object]]]:
        async with self.pool.acquire(timeout=timeout) as conn:
            yield lambda delay: conn.fetchval("SELECT pg_sleep($1)", delay)

    def bounds(self) -> tuple[int, int]:
        return self.pool.get_size(), self.pool.get_max_size()

    def unsettled(self) -> str | None:
        # asyncpg's pool knows no waiters count; its queue of holders is full
        # again once nothing is lent.
        free = self.pool._queue.qsize()
        return None if free == self.pool.get_max_size() else f"{self.pool.get_max_size() - free} holders out"

    async def close(self) -> None:
        await asyncio.wait_for(self.pool.close(), 5)


class PsycopgContender:
    name = "psycopg_pool"
    timeout_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, dsn: str, size: int, app_name: str) -> None:
        import psycopg_pool

        self.timeout_errors = (psycopg_pool.PoolTimeout,)
        parts = urlsplit(dsn)
        conninfo = f"{dsn}{'&' if parts.query else '?'}application_name={app_name}"
        self.pool = psycopg_pool.AsyncConnectionPool(
            conninfo, min_size=size, max_size=size, timeout=2.0, open=False, kwargs={"autocommit": True}
        )

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    @contextlib.asynccontextmanager
    async def lease(self, timeout: float) -> AsyncIterator[Callable[[float], Awaitable[object]]]:
        async with self.pool.connection(timeout=timeout) as conn:

            async def query(delay: float) -> object:
                cursor = await conn.execute("SELECT pg_sleep(%s)", (delay,))
                return await cursor.fetchone()

            yield query

    def bounds(self) -> tuple[int, int]:
        stats = self.pool.get_stats()
        return stats.get("pool_size", 0), self.pool.max_size

    def unsettled(self) -> str | None:
        stats = self.pool.get_stats()
        waiting = stats.get("requests_waiting", 0)
        lent = stats.get("pool_size", 0) - stats.get("pool_available", 0)
        return f"lent={lent} waiting={waiting}" if waiting else None

    async def close(self) -> None:
        await self.pool.close(timeout=5)


_CONTENDERS: dict[str, Callable[[str, int, str], Contender]] = {
    "asyncpool": AsyncpoolContender,
    "asyncpg": AsyncpgContender,
    "psycopg": PsycopgContender,
}


# -- one run -------------------------------------------------------------------------


@dataclass
class SoakReport:
    """What one pool went through, and what reached its callers."""

    pool: str
    seconds: float = 0.0
    tasks: int = 0
    ops: int = 0
    cancelled: int = 0
    #: By category (see the module docstring), then by kind.
    errors: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    waits: list[float] = field(default_factory=list)
    max_overrun: float = 0.0
    overruns: int = 0
    out_of_bounds: int = 0
    unsettled: str | None = None
    closed_twice: int = 0
    backends_left: int = 0
    max_loop_lag: float = 0.0

    def count(self, category: str) -> int:
        return sum(self.errors[category].values()) if category in self.errors else 0

    def failures(self) -> list[str]:
        """The pass conditions (applied to asyncpool)."""
        failed = []
        for category in ("lent broken", "internal", "release raised", "other"):
            if self.count(category):
                failed.append(f"{category}: {dict(self.errors[category])}")
        if self.overruns:
            failed.append(
                f"{self.overruns} acquires outlived their timeout by more than {OVERRUN_MARGIN} s "
                f"(worst {self.max_overrun:.3f} s)"
            )
        if self.out_of_bounds:
            failed.append(f"the size left its bounds {self.out_of_bounds} times")
        if self.unsettled:
            failed.append(f"after every task ended: {self.unsettled}")
        if self.closed_twice:
            failed.append(f"{self.closed_twice} connections closed twice")
        if self.backends_left:
            failed.append(f"{self.backends_left} backends left on the server after close()")
        if not self.ops:
            failed.append("no query succeeded")
        return failed

    def summary(self) -> str:
        waits = self.waits or [0.0]
        lines = [
            f"{self.pool}: {self.ops} queries in {self.seconds:.0f} s ({self.ops / max(self.seconds, 1e-9):,.0f}/s),"
            f" {self.tasks} tasks, {self.cancelled} cancelled",
            f"  faults injected: {dict(self.faults)}",
            f"  acquire wait: p50 {percentile(waits, 50) * 1000:.1f} ms, p99 {percentile(waits, 99) * 1000:.1f} ms,"
            f" max {max(waits) * 1000:.1f} ms; worst overrun of a timeout {self.max_overrun * 1000:.0f} ms",
            f"  event loop lag: max {self.max_loop_lag * 1000:.0f} ms",
        ]
        for category in ("timeout", "died in hands", "lent broken", "internal", "release raised", "other"):
            if self.count(category):
                kinds = ", ".join(f"{kind} {n}" for kind, n in self.errors[category].most_common())
                lines.append(f"  {category}: {self.count(category)} ({kinds})")
        lines.append(
            f"  size out of bounds: {self.out_of_bounds};"
            f" after the tasks: {self.unsettled or 'nothing lent or queued'};"
            f" closed twice: {self.closed_twice}; backends left after close: {self.backends_left}"
        )
        return "\n".join(lines)


async def run_soak(
    kind: str,
    *,
    dsn: str = DEFAULT_DSN,
    seconds: float = 60.0,
    tasks: int = 1000,
    size: int = 20,
    seed: int = 1,
    fault_every: float = 0.1,
    cancel_every: float = 0.01,
) -> SoakReport:
    """Soak one pool (``"asyncpool"``, ``"asyncpg"`` or ``"psycopg"``)."""
    target = urlsplit(dsn)
    app_name = f"asyncpool-soak-{uuid.uuid4().hex[:10]}"
    rng = random.Random(seed)
    report = SoakReport(pool=kind, tasks=tasks)
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 5432, lifetime=seconds + 120) as proxy:
        userinfo = target.netloc.rsplit("@", 1)[0] + "@" if "@" in target.netloc else ""
        proxied = target._replace(netloc=f"{userinfo}127.0.0.1:{proxy.port}").geturl()
        contender = _CONTENDERS[kind](proxied, size, app_name)
        report.pool = contender.name
        admin = await asyncpg.connect(dsn)
        try:
            await contender.open()
            await _drive(contender, proxy, admin, app_name, report, rng, seconds, tasks, fault_every, cancel_every)
            proxy.resume()
            proxy.allow()
            proxy.set_latency(0)
            with contextlib.suppress(Exception):
                await contender.close()
            report.backends_left = await _backends_left(admin, app_name)
        finally:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", app_name
            )
            await admin.close()
    if isinstance(contender, AsyncpoolContender):
        report.closed_twice = contender.connector.closed_twice()
    return report


async def _drive(
    contender: Contender,
    proxy: FaultProxy,
    admin: asyncpg.Connection[Any],
    app_name: str,
    report: SoakReport,
    rng: random.Random,
    seconds: float,
    tasks: int,
    fault_every: float,
    cancel_every: float,
) -> None:
    loop = asyncio.get_running_loop()
    work_rng = random.Random(rng.random())
    fault_rng = random.Random(rng.random())

    async def worker() -> None:
        while True:
            timeout = work_rng.uniform(0.05, 2.0)
            started = loop.time()
            stage = "acquire"
            ok = False
            try:
                async with contender.lease(timeout) as query:
                    report.waits.append(loop.time() - started)
                    stage = "query"
                    try:
                        await query(work_rng.choice((0.0, 0.001, 0.003)))
                    except Exception as exc:
                        category, name = classify(exc)
                        report.errors[category][name] += 1
                    else:
                        ok = True
                    stage = "release"
                if ok:
                    report.ops += 1
            except contender.timeout_errors:
                if stage != "acquire":
                    report.errors["other"][f"{stage}: {type_name(contender.timeout_errors[0])}"] += 1
                    continue
                report.errors["timeout"][type_name(contender.timeout_errors[0])] += 1
                overrun = loop.time() - started - timeout
                report.max_overrun = max(report.max_overrun, overrun)
                if overrun > OVERRUN_MARGIN:
                    report.overruns += 1
            except Exception as exc:
                # Raised by the acquire, or by giving the connection back
                # (asyncpg's pool passes its reset's errors to the caller).
                category, name = classify(exc)
                if category == "internal":
                    report.errors["internal"][f"{stage}: {name}"] += 1
                elif stage == "release":
                    report.errors["release raised"][name] += 1
                else:
                    report.errors["other"][f"{stage}: {name}"] += 1

    async def faults() -> None:
        while True:
            await asyncio.sleep(fault_every)
            fault = fault_rng.choices(FAULTS, _FAULT_WEIGHTS)[0]
            report.faults[fault] += 1
            if fault == "terminate":
                pids = [
                    row[0]
                    for row in await admin.fetch(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", app_name
                    )
                ]
                if pids:
                    await admin.execute("SELECT pg_terminate_backend($1)", fault_rng.choice(pids))
            elif fault == "cut":
                proxy.cut()
            elif fault == "stall":
                proxy.stall(fault_rng.uniform(0.05, 0.3))
            elif fault == "latency":
                proxy.set_latency(fault_rng.uniform(0.005, 0.03), duration=0.5)
            else:
                proxy.refuse(fault_rng.uniform(0.2, 1.0))

    async def monitor() -> None:
        expected = loop.time()
        while True:
            await asyncio.sleep(0.01)
            expected += 0.01
            report.max_loop_lag = max(report.max_loop_lag, loop.time() - expected)
            expected = loop.time()
            now, most = contender.bounds()
            if not 0 <= now <= most:
                report.out_of_bounds += 1

    workers = [loop.create_task(worker()) for _ in range(tasks)]
    # Every task ever started: a pool may swallow a cancellation and let a
    # "cancelled" task run on, so each is awaited at the end.
    started_tasks = set(workers)
    helpers = [loop.create_task(faults()), loop.create_task(monitor())]
    started = loop.time()
    try:
        while loop.time() - started < seconds:
            await asyncio.sleep(cancel_every)
            victim = work_rng.randrange(tasks)
            workers[victim].cancel()
            report.cancelled += 1
            workers[victim] = loop.create_task(worker())
            started_tasks.add(workers[victim])
            started_tasks = {task for task in started_tasks if not task.done()}
    finally:
        report.seconds = loop.time() - started
        for task in (*helpers, *started_tasks):
            task.cancel()
        await asyncio.gather(*helpers, *started_tasks, return_exceptions=True)
    # Every task has ended: nothing may be lent or queued any more.
    report.unsettled = contender.unsettled()


def type_name(cls: type[BaseException]) -> str:
    return cls.__name__


async def _backends_left(admin: asyncpg.Connection[Any], app_name: str) -> int:
    """Backends of the pool still on the server once it closed (a backend
    whose client left takes a moment to exit, so this waits for up to 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        left: int = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app_name)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.05)


# -- the command -------------------------------------------------------------------


def readme_section(reports: Sequence[SoakReport], args: argparse.Namespace) -> str:
    rows = []
    for report in reports:
        waits = report.waits or [0.0]
        rows.append(
            [
                report.pool,
                f"{report.ops:,}",
                f"{report.count('timeout'):,}",
                f"{report.count('died in hands'):,}",
                f"{report.count('lent broken'):,}",
                f"{report.count('internal'):,}",
                f"{report.count('release raised'):,}",
                f"{report.count('other'):,}",
                f"{percentile(waits, 99) * 1000:.0f}",
                f"{max(waits) * 1000:.0f}",
                f"{report.max_overrun * 1000:.0f}",
                report.unsettled or "none",
                f"{report.backends_left}",
            ]
        )
    table = markdown_table(
        [
            "pool",
            "queries",
            "timeouts",
            "died in hands",
            "lent broken",
            "internal errors",
            "release raised",
            "other",
            "p99 wait ms",
            "max wait ms",
            "worst overrun ms",
            "lent or queued after the tasks",
            "backends left after close",
        ],
        rows,
    )
    details = "\n\n".join("```\n" + report.summary() + "\n```" for report in reports)
    info = machine_info(["asyncpg", "psycopg", "psycopg-pool", "uvloop"])
    verdict = reports[0].failures() if reports and reports[0].pool == "asyncpool" else []
    return (
        f"{args.duration:.0f} s per pool, {args.tasks} tasks, a pool of {args.size} connections"
        f" ({args.loop} loop), fault seed {args.seed}; every pool saw the same schedule of faults.\n\n"
        f"{table}\n\n"
        f"asyncpool's pass conditions: {'all met' if not verdict else 'NOT MET: ' + '; '.join(verdict)}.\n\n"
        f"{details}\n\n"
        f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}; asyncpg {info['asyncpg']},"
        f" psycopg {info['psycopg']}, psycopg_pool {info['psycopg-pool']}, uvloop {info['uvloop']}."
        f" Produced by `nox -s soak` (`python benchmarks/soak.py --readme README.md`)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per pool")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--size", type=int, default=20)
    parser.add_argument("--pools", default=",".join(POOLS), help=f"comma-separated, of {', '.join(POOLS)}")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--dsn", default=os.environ.get("ASYNCPOOL_TEST_DSN", DEFAULT_DSN))
    parser.add_argument("--readme", help="write the summary into this README's soak section")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    print(f"soak seed {args.seed} (replay the fault schedule with --seed {args.seed})", flush=True)
    kinds = [kind.strip() for kind in args.pools.split(",") if kind.strip()]
    unknown = set(kinds) - set(POOLS)
    if unknown:
        parser.error(f"unknown pools: {', '.join(sorted(unknown))}")
    # Outages are the point here: one warning per outage would bury the report.
    logging.getLogger("asyncpool").setLevel(logging.ERROR)
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    reports = []
    for kind in kinds:
        report = asyncio.run(
            run_soak(kind, dsn=args.dsn, seconds=args.duration, tasks=args.tasks, size=args.size, seed=args.seed)
        )
        print(report.summary(), flush=True)
        reports.append(report)
    if args.readme:
        replace_readme_section(args.readme, "soak", readme_section(reports, args))
    failed = next((r.failures() for r in reports if r.pool == "asyncpool"), [])
    if failed:
        print("asyncpool FAILED the soak:\n  " + "\n  ".join(failed), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
