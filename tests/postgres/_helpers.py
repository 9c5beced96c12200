"""Small tools the PostgreSQL tests share: backend counting, waiting, and
control of the local server (the fault proxy is ``tests/faultproxy.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def configured_dsn() -> str:
    return os.environ.get("ASYNCPOOL_TEST_DSN", DEFAULT_DSN)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> None:
    """Skip the test; but in CI these tests must run, so fail instead."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: the PostgreSQL tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


def internals(conn: object) -> Any:
    """``conn`` typed as ``Any``, to look at asyncpg's private state."""
    return conn


def free_port() -> int:
    """A loopback TCP port nobody listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_port(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return parts._replace(netloc=f"{userinfo}{parts.hostname}:{port}").geturl()


async def backend_pids(admin: asyncpg.Connection[Any], application_name: str) -> list[int]:
    """Server processes serving connections that carry ``application_name``."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
        application_name,
    )
    return sorted(row["pid"] for row in rows)


async def wait_until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_for_backends(
    admin: asyncpg.Connection[Any], application_name: str, count: int, timeout: float = 5.0
) -> list[int]:
    """Poll until exactly ``count`` backends carry ``application_name``.

    A backend whose client has gone is listed for a moment longer, while the
    server process exits; polling keeps that from making tests flaky.
    """
    deadline = time.monotonic() + timeout
    while True:
        pids = await backend_pids(admin, application_name)
        if len(pids) == count:
            return pids
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} backends named {application_name!r}, found {len(pids)}: {pids}")
        await asyncio.sleep(0.02)


class LocalServer:
    """Stops and starts the local cluster that serves ``dsn`` (Debian's
    ``pg_ctlcluster``), for the tests that take the server away."""

    def __init__(self, version: str, cluster: str) -> None:
        self._cluster = [version, cluster]

    @classmethod
    def for_dsn(cls, dsn: str) -> LocalServer | None:
        parts = urlsplit(dsn)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1") or shutil.which("pg_lsclusters") is None:
            return None
        port = str(parts.port or 5432)
        listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False)
        for line in listing.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2] == port:
                return cls(fields[0], fields[1])
        return None

    async def _ctl(self, action: str) -> int:
        proc = await asyncio.create_subprocess_exec(
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            *self._cluster,
            action,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await proc.wait()

    async def stop(self) -> None:
        rc = await self._ctl("stop")
        assert rc == 0, f"pg_ctlcluster stop failed with exit code {rc}"

    async def ensure_started(self, dsn: str, timeout: float = 60.0) -> None:
        """Start the server if it is down and wait until it accepts connections."""
        await self._ctl("start")  # exit code 2 when it already runs: fine
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = await asyncpg.connect(dsn, timeout=2)
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
            else:
                await conn.close()
                return


@contextlib.asynccontextmanager
async def loop_errors() -> AsyncIterator[list[str]]:
    """Collect what the running loop reports through its exception handler
    (a "Future exception was never retrieved", a task destroyed pending)
    while the block runs, and after it once garbage is collected."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        reported.append(f"{context.get('message')}: {context.get('exception')!r}")

    loop.set_exception_handler(handler)
    try:
        yield reported
        await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
