"""The soak, short: asyncpool under a network fault every 100 ms.

``nox -s soak`` runs the full soak (60 s per pool, 1000 tasks, asyncpool
against asyncpg's pool and psycopg_pool, the summary into the README); this
is its short form, for every test run: asyncpool alone, 8 s, 300 tasks. The
fault schedule's seed is printed (``ASYNCPOOL_SEED`` replays it).
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

_BENCHMARKS = str(Path(__file__).resolve().parent.parent.parent / "benchmarks")
if _BENCHMARKS not in sys.path:
    sys.path.insert(0, _BENCHMARKS)

from soak import run_soak  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.mark.asyncio
async def test_a_short_soak_meets_every_pass_condition(pg_dsn: str) -> None:
    seed = int(os.environ.get("ASYNCPOOL_SEED", random.randrange(1 << 32)))
    print(f"soak seed {seed} (replay with ASYNCPOOL_SEED={seed})")
    report = await run_soak("asyncpool", dsn=pg_dsn, seconds=8, tasks=300, size=10, seed=seed)
    print(report.summary())
    assert report.failures() == []
    assert sum(report.faults.values()) >= 60, report.faults
    assert report.count("died in hands") > 0, "the faults reached connections in use"
