"""Every example imports on every Python the README supports (3.10-3.13):
a name that only a newer standard library has fails here, not in a
reader's hands."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(path for path in EXAMPLES.glob("*.py") if not path.name.startswith("_"))


def test_there_are_examples() -> None:
    assert {path.name for path in SCRIPTS} >= {"trade_logger.py", "trio_tcp_pool.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.name for path in SCRIPTS])
def test_example_imports_and_shows_its_help(script: Path) -> None:
    needs = {"trade_logger.py": "asyncpg", "trio_tcp_pool.py": "trio"}.get(script.name)
    if needs and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{script.name} needs {needs}")
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
