"""asyncpool next to the classic hand-rolled pool: an ``asyncio.Semaphore``
that bounds the leases plus a container of idle resources.

    python benchmarks/bench_semaphore_queue.py [--quick] [--readme README.md]

Also the same with a deadline on every wait, as asyncpool has. The same
rounds as ``bench_core.py`` (a pool of 10 dummy resources; one task
leasing back to back, or 10, 100, 1000 tasks each doing one ``sleep(0)``
inside the lease), on asyncio and uvloop, each pool interleaved with the
floor (a bare ``asyncio.Queue`` of 10 objects) in pairs of rounds; ratios are
the medians of the pairs' ratios. Also reported: the 99th percentile of the
acquire wait against its median at 1000 tasks (how evenly waiters are served),
and how often a task that arrived later got a resource before one that had
been waiting (``overtaken``): with a semaphore, a released slot wakes a
waiter, which then has to run before it can take the slot, while a task
that arrives in between and finds a resource idle takes it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine_info, markdown_table, percentile, replace_readme_section
from bench_core import NoopConnector

from asyncpool import AsyncPool

POOL_SIZE = 10
CONCURRENCY = (1, 10, 100, 1000)


class SemaphoreQueuePool:
    """The classic pool: a semaphore bounds the leases, a list holds the idle
    resources (the most recently returned on top)."""

    def __init__(self, resources: list[object]) -> None:
        self._slots = asyncio.Semaphore(len(resources))
        self._idle = list(resources)

    async def acquire(self) -> object:
        await self._slots.acquire()
        return self._idle.pop()

    def release(self, resource: object) -> None:
        self._idle.append(resource)
        self._slots.release()


class SemaphoreQueuePoolWithDeadline(SemaphoreQueuePool):
    """The same, with a deadline on every wait, as asyncpool has (30 s):
    ``asyncio.timeout`` (Python 3.11+; ``asyncio.wait_for`` before)."""

    async def acquire(self) -> object:
        if sys.version_info >= (3, 11):
            async with asyncio.timeout(30.0):
                await self._slots.acquire()
        else:  # pragma: no cover - Python 3.10
            await asyncio.wait_for(self._slots.acquire(), 30.0)
        return self._idle.pop()


async def _run(kind: str, target: Any, tasks: int, per_task: int, waits: list[float] | None) -> float:
    """Leases per second; records each acquire's wait into ``waits`` if given."""
    clock = time.perf_counter
    contended = tasks > 1

    async def one() -> None:
        for _ in range(per_task):
            started = clock() if waits is not None else 0.0
            if kind == "asyncpool":
                async with target.acquire():
                    if waits is not None:
                        waits.append(clock() - started)
                    if contended:
                        await asyncio.sleep(0)
            elif kind in ("semaphore", "deadline"):
                item = await target.acquire()
                try:
                    if waits is not None:
                        waits.append(clock() - started)
                    if contended:
                        await asyncio.sleep(0)
                finally:
                    target.release(item)
            else:
                item = await target.get()
                if waits is not None:
                    waits.append(clock() - started)
                if contended:
                    await asyncio.sleep(0)
                target.put_nowait(item)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(tasks)))
    return tasks * per_task / (time.perf_counter() - started)


async def _overtaken(kind: str, target: Any, tasks: int, per_task: int) -> float:
    """Share of grants that went to a task which started asking after some
    still-waiting task had (first come, first served would make it 0)."""
    asking: dict[int, int] = {}  # task -> ticket at which it began to ask
    ticket = 0
    overtakes = grants = 0

    async def one(me: int) -> None:
        nonlocal ticket, overtakes, grants
        for _ in range(per_task):
            ticket += 1
            asking[me] = ticket
            item = await target.acquire()
            mine = asking.pop(me)
            grants += 1
            if asking and min(asking.values()) < mine:
                overtakes += 1
            await asyncio.sleep(0)
            if kind == "asyncpool":
                await target.release(item)
            else:
                target.release(item)

    await asyncio.gather(*(one(i) for i in range(tasks)))
    return overtakes / grants


async def suite(total: int, rounds: int) -> list[dict[str, Any]]:
    pool: AsyncPool[object] = AsyncPool(
        NoopConnector(), min_size=POOL_SIZE, max_size=POOL_SIZE, health_check_interval=None
    )
    await pool.open(wait=True)
    semaphore = SemaphoreQueuePool([object() for _ in range(POOL_SIZE)])
    deadline = SemaphoreQueuePoolWithDeadline([object() for _ in range(POOL_SIZE)])
    floor: asyncio.Queue[object] = asyncio.Queue()
    for _ in range(POOL_SIZE):
        floor.put_nowait(object())
    rows: list[dict[str, Any]] = []
    for tasks in CONCURRENCY:
        per_task = max(total // tasks, 1)
        for kind, target in (("asyncpool", pool), ("semaphore", semaphore), ("deadline", deadline)):
            await _run(kind, target, tasks, per_task // 10 or 1, None)  # warm-up
            ratios, speeds = [], []
            for _ in range(rounds):
                speed = await _run(kind, target, tasks, per_task, None)
                base = await _run("floor", floor, tasks, per_task, None)
                ratios.append(speed / base)
                speeds.append(speed)
            waits: list[float] = []
            await _run(kind, target, tasks, per_task, waits)
            rows.append(
                {
                    "pool": kind,
                    "tasks": tasks,
                    "ops": statistics.median(speeds),
                    "ratio": statistics.median(ratios),
                    "p50_us": percentile(waits, 50) * 1e6,
                    "p99_us": percentile(waits, 99) * 1e6,
                    "overtaken": await _overtaken(kind, target, tasks, max(per_task // 4, 1)) if tasks > 1 else 0.0,
                }
            )
    await pool.close()
    return rows


def run_loop(loop_name: str, total: int, rounds: int) -> list[dict[str, Any]]:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(suite(total, rounds))
    return asyncio.run(suite(total, rounds))


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    names = {
        "asyncpool": "asyncpool (30 s deadline)",
        "semaphore": "Semaphore + list",
        "deadline": "Semaphore + list, 30 s deadline",
    }
    body = [
        [
            loop,
            str(row["tasks"]),
            names[row["pool"]],
            f"{row['ops']:,.0f}",
            f"{row['ratio']:.2f}x",
            f"{row['p50_us']:.1f}",
            f"{row['p99_us']:.1f}",
            f"{row['overtaken'] * 100:.1f} %" if row["tasks"] > 1 else "-",
        ]
        for loop, rows in results.items()
        for row in rows
    ]
    return markdown_table(
        ["loop", "tasks", "pool", "leases/s", "vs floor", "wait p50 µs", "wait p99 µs", "overtaken"], body
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--readme", help="write the table between the bench:semaphore markers of this file")
    args = parser.parse_args(argv)
    total, rounds = (20_000, 3) if args.quick else (100_000, 7)
    results: dict[str, list[dict[str, Any]]] = {}
    for loop_name in ("asyncio", "uvloop"):
        try:
            results[loop_name] = run_loop(loop_name, total, rounds)
        except ImportError:
            continue
    text = table(results)
    print(text)
    info = machine_info()
    note = (
        f"Floor: a bare `asyncio.Queue` of {POOL_SIZE} objects. {total:,} leases per point; the ratio is the median "
        f"of {rounds} back-to-back pool/floor pairs. Overtaken: the share of grants that went to a task which began "
        f"asking after another still waiting. Machine: {info['cpu']}, Python {info['python']}. Produced by "
        "`python benchmarks/bench_semaphore_queue.py --readme README.md`" + (" (quick run)" if args.quick else "") + "."
    )
    if args.readme:
        replace_readme_section(args.readme, "semaphore", f"{text}\n\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
