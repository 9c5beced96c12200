"""The trade-logger demo runs to the end against the test server, on every
Python the suite runs on (``nox -s demo`` runs its full size)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]


def test_trade_logger_logs_every_trade_both_ways(pg_dsn: str) -> None:
    env = {**os.environ, "ASYNCPOOL_DSN": pg_dsn, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "trade_logger.py"), "--trades", "60", "--concurrency", "6"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # The results table: each phase logged all 60 trades.
    logged = re.findall(r"^(connect per trade|asyncpool \(10 connections\)) +60 ", done.stdout, re.MULTILINE)
    assert sorted(logged) == ["asyncpool (10 connections)", "connect per trade"], done.stdout
    assert "speed-up:" in done.stdout
