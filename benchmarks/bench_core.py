"""Pure pool overhead, next to the CPython floor measured in the same run.

A no-op connector and a pool of 10; the floor is a bare ``asyncio.Queue``
holding 10 dummy objects, used the same way (under trio: a memory channel
holding 10 objects). Every pool figure is measured interleaved with its floor
(pairs of rounds back to back, the ratio being the median of the pairs'
ratios), so a noisy machine moves both alike.

    python benchmarks/bench_core.py [--quick] [--readme README.md]

Reported: cycles/s, the ratio to the floor, p50/p99 of the acquire wait
(separate timed passes, so the clock calls do not slow the throughput
figures; five of them, and the one with the median p99/p50 is shown), and
the pool's own memory per waiting task and per pooled resource, measured
with tracemalloc.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine_info, markdown_table, percentile, ratio_text, replace_readme_section

from asyncpool import AsyncPool

POOL_SIZE = 10
CONCURRENCY = (10, 100, 1000)
RESULTS = Path(__file__).resolve().parent / "results"


class NoopConnector:
    """Makes dummy objects; every method returns at once."""

    async def connect(self) -> object:
        return object()

    async def close(self, resource: object) -> None:
        return None

    async def validate(self, resource: object) -> bool:
        return True

    async def reset(self, resource: object) -> None:
        return None


# -- asyncio / uvloop ----------------------------------------------------------


async def _asyncio_pool() -> AsyncPool[object]:
    pool = AsyncPool(NoopConnector(), min_size=POOL_SIZE, max_size=POOL_SIZE, health_check_interval=None)
    await pool.open(wait=True)
    return pool


def _asyncio_queue() -> asyncio.Queue[object]:
    queue: asyncio.Queue[object] = asyncio.Queue()
    for _ in range(POOL_SIZE):
        queue.put_nowait(object())
    return queue


async def asyncio_pool_cycles(pool: AsyncPool[object], tasks: int, per_task: int) -> float:
    async def one() -> None:
        if tasks == 1:
            for _ in range(per_task):
                async with pool.acquire():
                    pass
        else:
            for _ in range(per_task):
                async with pool.acquire():
                    await asyncio.sleep(0)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(tasks)))
    return tasks * per_task / (time.perf_counter() - started)


async def asyncio_floor_cycles(queue: asyncio.Queue[object], tasks: int, per_task: int) -> float:
    async def one() -> None:
        if tasks == 1:
            for _ in range(per_task):
                item = await queue.get()
                queue.put_nowait(item)
        else:
            for _ in range(per_task):
                item = await queue.get()
                await asyncio.sleep(0)
                queue.put_nowait(item)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(tasks)))
    return tasks * per_task / (time.perf_counter() - started)


async def asyncio_pool_waits(pool: AsyncPool[object], tasks: int, per_task: int) -> list[float]:
    waits: list[float] = []
    clock = time.perf_counter

    async def one() -> None:
        for _ in range(per_task):
            started = clock()
            async with pool.acquire():
                waits.append(clock() - started)
                if tasks > 1:
                    await asyncio.sleep(0)

    await asyncio.gather(*(one() for _ in range(tasks)))
    return waits


async def asyncio_floor_waits(queue: asyncio.Queue[object], tasks: int, per_task: int) -> list[float]:
    waits: list[float] = []
    clock = time.perf_counter

    async def one() -> None:
        for _ in range(per_task):
            started = clock()
            item = await queue.get()
            waits.append(clock() - started)
            if tasks > 1:
                await asyncio.sleep(0)
            queue.put_nowait(item)

    await asyncio.gather(*(one() for _ in range(tasks)))
    return waits


async def asyncio_suite(total: int, rounds: int, wait_passes: int) -> list[dict[str, Any]]:
    pool = await _asyncio_pool()
    queue = _asyncio_queue()
    rows = []
    for tasks in (1, *CONCURRENCY):
        per_task = max(1, total // tasks)
        await asyncio_pool_cycles(pool, tasks, max(1, per_task // 10))  # warm up
        await asyncio_floor_cycles(queue, tasks, max(1, per_task // 10))
        pool_rates, floor_rates = await _paired_rounds(
            partial(asyncio_pool_cycles, pool, tasks, per_task),
            partial(asyncio_floor_cycles, queue, tasks, per_task),
            rounds,
        )
        pool_waits = [await asyncio_pool_waits(pool, tasks, per_task) for _ in range(wait_passes)]
        floor_waits = await asyncio_floor_waits(queue, tasks, per_task)
        rows.append(_row(tasks, pool_rates, floor_rates, pool_waits, floor_waits))
    stats = pool.stats()
    assert stats.in_use == 0, stats
    assert stats.size == POOL_SIZE, stats
    await pool.close()
    return rows


async def asyncio_memory(waiters: int) -> dict[str, float]:
    """Bytes the pool itself allocates per waiting task and per resource."""
    package = str(Path(sys.modules["asyncpool"].__file__ or "").parent)

    def own_bytes(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
        total = 0
        for stat in after.compare_to(before, "traceback"):
            if any(frame.filename.startswith(package) for frame in stat.traceback):
                total += stat.size_diff
        return total

    def all_bytes(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
        return sum(stat.size_diff for stat in after.compare_to(before, "filename"))

    tracemalloc.start(30)
    # Per pooled resource: fill a large pool, count what asyncpool allocated.
    gc.collect()
    before = tracemalloc.take_snapshot()
    big = AsyncPool(NoopConnector(), min_size=1000, max_size=1000, health_check_interval=None)
    await big.open(wait=True)
    gc.collect()
    after = tracemalloc.take_snapshot()
    per_resource = own_bytes(before, after) / 1000
    await big.close()
    del big

    # Per waiter: all 10 resources held, then ``waiters`` tasks queue up.
    pool = await _asyncio_pool()
    held = [await pool.acquire() for _ in range(POOL_SIZE)]

    async def wait_for_one() -> None:
        async with pool.acquire(timeout=600):
            pass

    gc.collect()
    before = tracemalloc.take_snapshot()
    tasks = [asyncio.ensure_future(wait_for_one()) for _ in range(waiters)]
    while pool.stats().waiting < waiters:
        await asyncio.sleep(0)
    gc.collect()
    after = tracemalloc.take_snapshot()
    pool_own = own_bytes(before, after) / waiters
    pool_total = all_bytes(before, after) / waiters
    for resource in held:
        await pool.release(resource)
    await asyncio.gather(*tasks)
    await pool.close()

    queue = _asyncio_queue()
    items = [await queue.get() for _ in range(POOL_SIZE)]

    async def get_one() -> None:
        queue.put_nowait(await queue.get())

    gc.collect()
    before = tracemalloc.take_snapshot()
    tasks = [asyncio.ensure_future(get_one()) for _ in range(waiters)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gc.collect()
    after = tracemalloc.take_snapshot()
    floor_total = all_bytes(before, after) / waiters
    for item in items:
        queue.put_nowait(item)
    await asyncio.gather(*tasks)
    tracemalloc.stop()
    return {
        "per_waiter_pool_bytes": pool_own,
        "per_waiter_total_bytes": pool_total,
        "per_waiter_floor_total_bytes": floor_total,
        "per_resource_pool_bytes": per_resource,
    }


# -- trio ---------------------------------------------------------------------


def trio_suite(total: int, rounds: int, wait_passes: int) -> list[dict[str, Any]]:
    import trio

    async def main() -> list[dict[str, Any]]:
        pool = AsyncPool(NoopConnector(), min_size=POOL_SIZE, max_size=POOL_SIZE, health_check_interval=None)
        await pool.open(wait=True)
        send, receive = trio.open_memory_channel[object](POOL_SIZE)
        for _ in range(POOL_SIZE):
            send.send_nowait(object())

        async def run_tasks(body: Callable[[], Awaitable[None]], tasks: int) -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(tasks):
                    nursery.start_soon(body)

        async def pool_cycles(tasks: int, per_task: int, waits: list[float] | None = None) -> float:
            clock = time.perf_counter

            async def one() -> None:
                for _ in range(per_task):
                    started = clock()
                    async with pool.acquire():
                        if waits is not None:
                            waits.append(clock() - started)
                        if tasks > 1:
                            await trio.sleep(0)

            started = clock()
            await run_tasks(one, tasks)
            return tasks * per_task / (clock() - started)

        async def floor_cycles(tasks: int, per_task: int, waits: list[float] | None = None) -> float:
            clock = time.perf_counter

            async def one() -> None:
                for _ in range(per_task):
                    started = clock()
                    item = await receive.receive()
                    if waits is not None:
                        waits.append(clock() - started)
                    if tasks > 1:
                        await trio.sleep(0)
                    send.send_nowait(item)

            started = clock()
            await run_tasks(one, tasks)
            return tasks * per_task / (clock() - started)

        rows = []
        for tasks in (1, *CONCURRENCY):
            per_task = max(1, total // tasks)
            await pool_cycles(tasks, max(1, per_task // 10))
            await floor_cycles(tasks, max(1, per_task // 10))
            pool_rates, floor_rates = await _paired_rounds(
                partial(pool_cycles, tasks, per_task), partial(floor_cycles, tasks, per_task), rounds
            )
            pool_waits: list[list[float]] = []
            for _ in range(wait_passes):
                pool_waits.append([])
                await pool_cycles(tasks, per_task, pool_waits[-1])
            floor_waits: list[float] = []
            await floor_cycles(tasks, per_task, floor_waits)
            rows.append(_row(tasks, pool_rates, floor_rates, pool_waits, floor_waits))
        await pool.close()
        return rows

    return trio.run(main)


# -- reporting ------------------------------------------------------------------


async def _paired_rounds(
    pool_round: Callable[[], Awaitable[float]], floor_round: Callable[[], Awaitable[float]], rounds: int
) -> tuple[list[float], list[float]]:
    """``rounds`` pairs of one pool round and one floor round, back to back,
    each pair in the other order than the one before: a slow spell of the
    machine then falls on both halves of a pair, and neither side always
    runs first."""
    pool_rates: list[float] = []
    floor_rates: list[float] = []
    for number in range(rounds):
        if number % 2:
            floor_rates.append(await floor_round())
            pool_rates.append(await pool_round())
        else:
            pool_rates.append(await pool_round())
            floor_rates.append(await floor_round())
    return pool_rates, floor_rates


def _row(
    tasks: int,
    pool_rates: list[float],
    floor_rates: list[float],
    pool_waits: list[list[float]],
    floor_waits: list[float],
) -> dict[str, Any]:
    pool_rate = statistics.median(pool_rates)
    floor_rate = statistics.median(floor_rates)
    # The ratio of each pair, then their median: robust to a machine whose
    # speed drifts between pairs, which a ratio of two medians is not.
    ratio = statistics.median(p / f for p, f in zip(pool_rates, floor_rates, strict=True))
    # The wait percentiles of the pass whose p99/p50 is the median of the
    # passes'. At 1000 tasks a wait spans 990 other leases (FIFO), so a
    # few milliseconds in which the machine runs slower lengthen a whole
    # queue's worth of waits at once: over 1 % of a pass's samples, enough
    # to move its p99 by itself.
    passes = sorted((_spread(waits), percentile(waits, 50), percentile(waits, 99)) for waits in pool_waits)
    spread, p50, p99 = passes[(len(passes) - 1) // 2]
    return {
        "tasks": tasks,
        "pool_cycles_per_s": pool_rate,
        "floor_cycles_per_s": floor_rate,
        "ratio": ratio,
        "wait_p50_us": p50 * 1e6,
        "wait_p99_us": p99 * 1e6,
        "p99_over_p50": spread,
        "p99_over_p50_passes": [passed[0] for passed in passes],
        "floor_wait_p50_us": percentile(floor_waits, 50) * 1e6,
        "floor_wait_p99_us": percentile(floor_waits, 99) * 1e6,
    }


def _spread(waits: list[float]) -> float:
    p50 = percentile(waits, 50)
    return percentile(waits, 99) / p50 if p50 > 0 else float("nan")


def _table(results: dict[str, Any]) -> str:
    headers = [
        "loop",
        "tasks",
        "asyncpool cycles/s",
        "floor cycles/s",
        "ratio",
        "wait p50 µs",
        "wait p99 µs",
        "p99/p50",
    ]
    rows = []
    for loop, loop_rows in results["throughput"].items():
        for row in loop_rows:
            rows.append(
                [
                    loop,
                    row["tasks"],
                    f"{row['pool_cycles_per_s']:,.0f}",
                    f"{row['floor_cycles_per_s']:,.0f}",
                    f"{row['ratio']:.2f}x",
                    f"{row['wait_p50_us']:.1f}",
                    f"{row['wait_p99_us']:.1f}",
                    f"{row['p99_over_p50']:.2f}",
                ]
            )
    memory = results["memory"]
    info = results["machine"]
    lines = [
        markdown_table(headers, rows),
        "",
        _targets(results),
        "",
        f"Memory (tracemalloc, {results['waiters']:,} tasks waiting on a pool of {POOL_SIZE}): "
        f"the pool's own bookkeeping is **{memory['per_waiter_pool_bytes']:.0f} bytes per waiting task** "
        f"(everything allocated per waiting task, the task itself included: "
        f"{memory['per_waiter_total_bytes']:.0f} bytes, against {memory['per_waiter_floor_total_bytes']:.0f} "
        f"for a task waiting on the bare `asyncio.Queue`) "
        f"and **{memory['per_resource_pool_bytes']:.0f} bytes per pooled resource**.",
        "",
        "Floor: a bare `asyncio.Queue` of 10 objects (`await q.get()` … `q.put_nowait()`); under trio a memory "
        "channel of 10 objects. Contended rounds do one `sleep(0)` inside the lease. "
        f"Ratios are the median of {results['rounds']} back-to-back pool/floor pairs; the waits are those of "
        f"the one of {results['wait_passes']} timed passes whose p99/p50 is the median (the target line lists "
        "each pass's). "
        f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores, Python {info.get('python', '?')}, "
        f"uvloop {info.get('uvloop', '-')}, trio {info.get('trio', '-')}. "
        "Produced by `nox -s bench` (`python benchmarks/bench_core.py --readme README.md`).",
    ]
    return "\n".join(lines)


def _verdict(value: float, target: float, *, at_most: bool = False) -> str:
    met = value <= target if at_most else value >= target
    return "met" if met else "**not met**"


def _targets(results: dict[str, Any]) -> str:
    """The issue's targets, checked against this run's figures."""
    lines = ["Targets, checked against this run:", ""]
    for loop, loop_rows in results["throughput"].items():
        by_tasks = {row["tasks"]: row for row in loop_rows}
        if loop == "trio":
            worst = min(row["ratio"] for row in loop_rows)
            lines.append(
                "- trio: at least 0.8x its floor at every concurrency: "
                f"lowest {ratio_text(worst, 0.8)}, {_verdict(worst, 0.8)}"
            )
            continue
        one = by_tasks[1]["ratio"]
        contended = min(by_tasks[t]["ratio"] for t in CONCURRENCY)
        spread = by_tasks[1000]["p99_over_p50"]
        passes = by_tasks[1000].get("p99_over_p50_passes", [spread])
        lines.append(
            f"- {loop}: uncontended at least 0.5x: {ratio_text(one, 0.5)}, {_verdict(one, 0.5)}; "
            "contended at least 0.7x at every concurrency: "
            f"lowest {ratio_text(contended, 0.7)}, {_verdict(contended, 0.7)}; "
            f"p99 wait at most 2x p50 at 1000 tasks: {ratio_text(spread, 2.0)}, {_verdict(spread, 2.0, at_most=True)} "
            f"(median of {len(passes)} timed passes: {', '.join(f'{value:.2f}' for value in passes)})"
        )
    per_waiter = results["memory"]["per_waiter_pool_bytes"]
    lines.append(
        f"- memory: under 1 KiB of pool bookkeeping per waiting task: {per_waiter:.0f} bytes, "
        f"{_verdict(per_waiter, 1024, at_most=True)}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--readme", help="write the table into this README between the bench:core markers")
    parser.add_argument("--loops", default="asyncio,uvloop,trio")
    args = parser.parse_args(argv)
    total = 20_000 if args.quick else 70_000  # cycles per round
    rounds = 3 if args.quick else 15
    wait_passes = 1 if args.quick else 5
    waiters = 1_000 if args.quick else 10_000
    loops = args.loops.split(",")
    results: dict[str, Any] = {"throughput": {}, "waiters": waiters, "rounds": rounds, "wait_passes": wait_passes}
    if "asyncio" in loops:
        results["throughput"]["asyncio"] = asyncio.run(asyncio_suite(total, rounds, wait_passes))
    if "uvloop" in loops:
        try:
            import uvloop
        except ImportError:
            print("uvloop not installed; skipping it", file=sys.stderr)
        else:
            results["throughput"]["uvloop"] = uvloop.run(asyncio_suite(total, rounds, wait_passes))
    if "trio" in loops:
        try:
            results["throughput"]["trio"] = trio_suite(total, rounds, wait_passes)
        except ImportError:
            print("trio not installed; skipping it", file=sys.stderr)
    results["memory"] = asyncio.run(asyncio_memory(waiters))
    results["machine"] = machine_info(("uvloop", "trio"))
    text = _table(results)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("core-quick.json" if args.quick else "core.json")).write_text(json.dumps(results, indent=2) + "\n")
    if args.readme:
        replace_readme_section(args.readme, "core", text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
