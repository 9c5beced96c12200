"""Every Python block in the README is a whole program that runs as written.

Each block is run in a fresh interpreter, as a reader would paste it, with
one change: the DSNs it names (the local server at ``127.0.0.1:5432``, a
PgBouncer at ``127.0.0.1:6432``) point at the test server and the test's
PgBouncer.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.postgres

README = Path(__file__).resolve().parents[2] / "README.md"
SERVER_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PGBOUNCER_DSN = "postgresql://postgres@127.0.0.1:6432/postgres"


def _blocks() -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced block opened by a line that is
    exactly ```` ```python ````."""
    found: list[tuple[int, str]] = []
    lines = README.read_text().splitlines()
    start: int | None = None
    for number, line in enumerate(lines, 1):
        if start is None and line == "```python":
            start = number
        elif start is not None and line == "```":
            found.append((start, "\n".join(lines[start : number - 1]) + "\n"))
            start = None
    assert start is None, f"README.md:{start}: a block that never ends"
    return found


BLOCKS = _blocks()


def test_the_readme_has_python_blocks_and_each_names_a_known_dsn() -> None:
    assert len(BLOCKS) >= 4
    for line, code in BLOCKS:
        dsns = set(re.findall(r"postgres(?:ql)?://[^\"'\s]+", code))
        assert dsns <= {SERVER_DSN, PGBOUNCER_DSN}, f"README.md:{line}: {dsns}"


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line: int, code: str, pg_dsn: str, request: pytest.FixtureRequest) -> None:
    program = code.replace(SERVER_DSN, pg_dsn)
    if PGBOUNCER_DSN in code:
        program = program.replace(PGBOUNCER_DSN, request.getfixturevalue("pgbouncer_dsn"))
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=README.parent, check=False
    )
    assert done.returncode == 0, f"README.md:{line} failed:\n{done.stderr}"
    assert done.stdout.strip(), f"README.md:{line} printed nothing"
