"""Fixtures for the PostgreSQL tests.

The server comes from ``ASYNCPOOL_TEST_DSN`` (default: the local server's
``test`` database). If it cannot be reached these tests are skipped, except
when ``CI`` is set: there they must run, so they fail instead. The same goes
for the ``pgbouncer`` binary.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest
import pytest_asyncio

from asyncpool.asyncpg import AsyncpgConnector

from ..faultproxy import FaultProxy
from ._helpers import configured_dsn, free_port, unavailable, with_port


@pytest.fixture(scope="session", autouse=True)
def pg_dsn() -> str:
    """The DSN of a reachable server, checked once per session."""
    dsn = configured_dsn()

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        unavailable(f"PostgreSQL is not reachable through ASYNCPOOL_TEST_DSN: {type(exc).__name__}: {exc}")
    return dsn


@pytest.fixture
def app_name() -> str:
    """A fresh ``application_name``, to find this test's backends."""
    return f"asyncpool-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_connector(pg_dsn: str, app_name: str) -> Callable[..., AsyncpgConnector]:
    """``AsyncpgConnector`` for the test server, tagged with ``app_name``."""

    def make(dsn: str | None = None, **kwargs: Any) -> AsyncpgConnector:
        kwargs.setdefault("server_settings", {"application_name": app_name})
        return AsyncpgConnector(dsn or pg_dsn, **kwargs)

    return make


@pytest.fixture
def fault_proxy(pg_dsn: str) -> Iterator[FaultProxy]:
    """A fault-injecting TCP proxy in front of the test server."""
    target = urlsplit(pg_dsn)
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 5432, lifetime=120) as proxy:
        yield proxy


@pytest.fixture
def proxied_dsn(pg_dsn: str, fault_proxy: FaultProxy) -> str:
    """The test server's DSN, through ``fault_proxy``."""
    return with_port(pg_dsn, fault_proxy.port)


@pytest_asyncio.fixture
async def admin(pg_dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A plain connection of the test's own, outside any pool."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


# -- PgBouncer -------------------------------------------------------------------


def _pgbouncer_binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found is None and os.access("/usr/sbin/pgbouncer", os.X_OK):
        found = "/usr/sbin/pgbouncer"
    return found


@pytest.fixture(scope="module")
def pgbouncer_dsn(pg_dsn: str) -> Iterator[str]:
    """A PgBouncer in transaction mode in front of the test server, five
    server connections per pool; yields the DSN to connect through it."""
    binary = _pgbouncer_binary()
    if binary is None:
        unavailable("pgbouncer is not installed (apt-get install pgbouncer)")
        raise AssertionError("unreachable")
    target = urlsplit(pg_dsn)
    user = unquote(target.username or "postgres")
    password = unquote(target.password or "")
    database = target.path.lstrip("/") or user
    port = free_port()
    # Not under pytest's tmp_path: its parents are private to root, and
    # pgbouncer will not run as root.
    directory = tempfile.mkdtemp(prefix="asyncpool-pgbouncer-")
    server = f"host={target.hostname or '127.0.0.1'} port={target.port or 5432} dbname={database} user={user}"
    if password:
        server += f" password={password}"
    files = {
        "userlist.txt": f'"{user}" ""\n',
        "pgbouncer.ini": "\n".join(
            [
                "[databases]",
                f"{database} = {server}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {directory}/userlist.txt",
                "pool_mode = transaction",
                "default_pool_size = 5",
                "max_client_conn = 1000",
                f"admin_users = {user}",
                f"pidfile = {directory}/pgbouncer.pid",
                "",
            ]
        ),
    }
    for name, text in files.items():
        with open(os.path.join(directory, name), "w") as fh:
            fh.write(text)
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in [directory, *(os.path.join(directory, name) for name in files)]:
            os.chown(path, owner.pw_uid, owner.pw_gid)
        run_as = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    log_path = os.path.join(directory, "pgbouncer.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [binary, os.path.join(directory, "pgbouncer.ini")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **run_as,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    with open(log_path) as fh:
                        pytest.fail(f"pgbouncer did not start:\n{fh.read()[-2000:]}", pytrace=False)
                time.sleep(0.05)
        userinfo = user if not password else f"{user}:{target.password}"
        yield f"postgresql://{userinfo}@127.0.0.1:{port}/{database}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(directory, ignore_errors=True)
