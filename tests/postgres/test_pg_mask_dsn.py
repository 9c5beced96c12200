"""A DSN's password never survives ``mask_dsn``, in any of its spellings."""

from __future__ import annotations

import pytest

pytest.importorskip("asyncpg")

from asyncpool.asyncpg import AsyncpgConnector, mask_dsn


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


def test_a_password_that_is_also_other_text_masks_the_field_only() -> None:
    # The password "postgres" is also the user, the database and part of the
    # scheme: only the password field is masked.
    dsn = "postgresql://postgres:postgres@127.0.0.1:1/postgres"
    assert mask_dsn(dsn) == "postgresql://postgres:***@127.0.0.1:1/postgres"
    connector = AsyncpgConnector(dsn)
    assert repr(connector) == "<AsyncpgConnector 'postgresql://postgres:***@127.0.0.1:1/postgres' reset='full'>"


def test_a_dsn_whose_password_field_cannot_be_masked_is_withheld_from_the_repr() -> None:
    connector = AsyncpgConnector("postgresql://app:pa ss@db/app")
    assert "pa ss" not in repr(connector)
    assert "withheld" in repr(connector)
