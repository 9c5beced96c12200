"""The DSN's password never shows: not in reprs, log records or errors."""

from __future__ import annotations

import logging
import random
import traceback
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import asyncpg
import pytest
import pytest_asyncio

from asyncpool import AsyncPool, PoolTimeout
from asyncpool.asyncpg import AsyncpgConnector, create_pool

from ._helpers import free_port, with_port

if TYPE_CHECKING:
    from typing import TypeAlias

    Admin: TypeAlias = asyncpg.Connection[Any]

pytestmark = [pytest.mark.postgres]

PASSWORD = "S3cr3t-p@ss:w0rd/xyz"


@pytest_asyncio.fixture
async def secret_dsn(pg_dsn: str, admin: Admin) -> AsyncIterator[str]:
    """A DSN for a role that has a password (which trust authentication on
    the test server ignores, so the connection still succeeds)."""
    role = f"asyncpool_secret_{random.randrange(1 << 30)}"
    await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    target = urlsplit(pg_dsn)
    netloc = f"{role}:{quote(PASSWORD, safe='')}@{target.hostname}:{target.port or 5432}"
    try:
        yield target._replace(netloc=netloc).geturl()
    finally:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
            role,
        )
        await admin.execute(f"DROP ROLE {role}")


def _assert_hidden(text: str) -> None:
    assert PASSWORD not in text
    assert quote(PASSWORD, safe="") not in text


def _assert_exception_hidden(exc: BaseException) -> None:
    _assert_hidden("".join(traceback.format_exception(exc)))
    _assert_hidden(repr(exc.args))


def _assert_logs_hidden(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records
    for record in caplog.records:
        _assert_hidden(record.getMessage())
        if record.exc_info:
            _assert_hidden("".join(traceback.format_exception(*record.exc_info)))


@pytest.mark.asyncio
async def test_password_is_kept_out_of_reprs_and_logs(secret_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    connector = AsyncpgConnector(secret_dsn)
    assert ":***@" in repr(connector)
    _assert_hidden(repr(connector))
    async with AsyncPool(connector, min_size=1, max_size=2, name="secret") as pool:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_user") == secret_dsn.split("//")[1].split(":")[0]
        _assert_hidden(repr(pool))
        _assert_hidden(str(pool.stats()))
    async with create_pool(secret_dsn, min_size=1, max_size=1) as facade:
        assert await facade.fetchval("SELECT 1") == 1
        _assert_hidden(repr(facade))
    _assert_hidden(repr(AsyncpgConnector(host="127.0.0.1", user="x", password=PASSWORD)))
    logging.getLogger("asyncpool").debug("a record, so that there is one to check")
    _assert_logs_hidden(caplog)


@pytest.mark.asyncio
async def test_password_is_kept_out_of_connect_errors(secret_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    down = with_port(secret_dsn, free_port())
    pool = AsyncPool(AsyncpgConnector(down), min_size=1, timeout=0.3)
    with pytest.raises(PoolTimeout) as caught:
        await pool.open(wait=True)
    await pool.close()
    assert caught.value.__cause__ is not None
    _assert_exception_hidden(caught.value)
    with pytest.raises(PoolTimeout) as caught:
        await create_pool(down, min_size=1, acquire_timeout=0.3)
    _assert_exception_hidden(caught.value)
    _assert_logs_hidden(caplog)


@pytest.mark.asyncio
async def test_an_error_that_quotes_the_dsn_is_scrubbed(secret_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """Drivers and resolvers sometimes echo what they were given."""
    caplog.set_level(logging.DEBUG)

    async def echoing_connect(dsn: str, **kwargs: Any) -> asyncpg.Connection[Any]:
        try:
            raise LookupError(f"no route for {dsn}")
        except LookupError as inner:
            raise OSError(f"cannot reach {dsn} with password {PASSWORD}") from inner

    connector = AsyncpgConnector(secret_dsn, connect=echoing_connect)
    with pytest.raises(OSError, match="cannot reach") as caught:
        await connector.connect()
    _assert_exception_hidden(caught.value)
    assert "***" in str(caught.value)
    pool = AsyncPool(connector, min_size=1, timeout=0.3)
    with pytest.raises(PoolTimeout) as timed_out:
        await pool.open(wait=True)
    await pool.close()
    _assert_exception_hidden(timed_out.value)
    _assert_logs_hidden(caplog)
