"""A DSN's password never survives ``mask_dsn``, in any of its spellings."""

from __future__ import annotations

import pytest

pytest.importorskip("asyncpg")

from asyncpool.asyncpg import mask_dsn


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgresql://app:p@ss/w0rd@db/app", "postgresql://app:***@db/app"),
        (
            "postgres://db/app?user=app&password=s3cret&sslmode=off",
            "postgres://db/app?user=app&password=***&sslmode=off",
        ),
        ("host=db user=app password=s3cret dbname=app", "host=db user=app password=*** dbname=app"),
        ("host=db password = 's3 cret' dbname=app", "host=db password = *** dbname=app"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
    ],
)
def test_password_is_masked(dsn: str, shown: str) -> None:
    assert mask_dsn(dsn) == shown
    assert "s3cret" not in mask_dsn(dsn)
    assert "s3 cret" not in mask_dsn(dsn)
