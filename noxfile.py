"""Sessions: ``tests`` (every Python 3.10-3.13 this machine has), ``lint``,
``typecheck``, ``downstream``, ``bench``, ``soak``, ``demo``.

    nox -s tests        # the test suite; PostgreSQL tests need the local server
    nox -s downstream   # asyncpg's own pool tests against asyncpool.asyncpg.create_pool
    nox -s demo         # the trade-logger demo against PostgreSQL
    nox -s bench        # benchmarks; writes their tables into README.md
    nox -s soak         # the full soak against PostgreSQL; writes its summary into README.md
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "downstream"]
nox.options.reuse_existing_virtualenvs = True
# Locally, run on whichever of the Pythons below exist; CI (``CI`` set)
# makes every one of them available and nox then insists on all of them.
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
TEST_DEPS = [
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "pytest-timeout>=2.3",
    "anyio>=4.4",
    "trio>=0.25",
    "sniffio>=1.3",
    "uvloop>=0.19",
    "asyncpg>=0.29",
    "hypothesis>=6.100",
]
BENCH_DEPS = ["asyncpg>=0.29", "uvloop>=0.19", "trio>=0.25", "sniffio>=1.3"]
PEER_DEPS = ["psycopg[binary]>=3.1", "psycopg-pool>=3.2", "sqlalchemy[asyncio]>=2.0", "matplotlib>=3.7"]


def install_project(session: nox.Session, *extra: str) -> None:
    """The one way every session installs asyncpool and what it needs."""
    session.install("-e", ".", *extra)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite: core on asyncio, uvloop and trio; asyncpg against PostgreSQL."""
    install_project(session, *TEST_DEPS)
    session.run("python", "-m", "pytest", *(session.posargs or ["-q", "-ra"]))


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """``mypy --strict`` over the package, the tests, benchmarks, examples and this file."""
    install_project(session, *TEST_DEPS, *PEER_DEPS, "mypy>=1.11", "asyncpg-stubs>=0.29", "nox")
    session.run("mypy")


@nox.session(python="3.11")
def downstream(session: nox.Session) -> None:
    """asyncpg's ``tests/test_pool.py``, from the source distribution of the
    installed asyncpg, run against ``asyncpool.asyncpg.create_pool`` (see
    ``downstream/asyncpg_plugin.py`` for what is skipped and why)."""
    install_project(session, "asyncpg>=0.29", "pytest>=8", "pytest-timeout>=2.3")
    session.run("python", "downstream/run_asyncpg_tests.py", *session.posargs)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Pool overhead against the CPython floor, and end to end against peers."""
    install_project(session, *BENCH_DEPS, *PEER_DEPS)
    quick = ["--quick"] if "quick" in session.posargs else []
    session.run("python", "benchmarks/bench_core.py", "--readme", "README.md", *quick)
    session.run("python", "benchmarks/bench_pg.py", "--readme", "README.md", *quick)


@nox.session(python="3.11")
def soak(session: nox.Session) -> None:
    """Faults every 100 ms and random cancellations for 60 s per pool: asyncpool,
    asyncpg's pool and psycopg_pool in one run (``-- --duration 10`` for a short
    one; the test suite runs an 8 s one of asyncpool alone)."""
    install_project(session, *BENCH_DEPS, "psycopg[binary]>=3.1", "psycopg-pool>=3.2")
    session.run("python", "benchmarks/soak.py", "--readme", "README.md", *session.posargs)


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """The high-frequency trade logger: connect per trade, then through the pool."""
    install_project(session, "asyncpg>=0.29")
    session.run("python", "examples/trade_logger.py", *session.posargs)
