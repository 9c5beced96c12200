"""Seeing SQL ``PREPARE`` go by, so the full reset drops what it made only
when there can be something to drop.

Dropping statements made with SQL ``PREPARE`` takes a look at
``pg_prepared_statements`` and a PL/pgSQL block, which doubled the cost of
the reset's round trip when done on every release (measured on the end-to-end
benchmark: 16-17k leases/s fell to 11k at 10 tasks). So the connection class
notes any query text that contains ``prepare`` in any letter case (a
substring search per query, under a microsecond), and the reset adds the drop
only then. Text that merely mentions the word costs one needless drop; a
statement prepared by server-side code the client never spelled out (a
function that runs ``EXECUTE 'PREPARE ...'``) is not seen.
"""

from __future__ import annotations

import re
from typing import Any

_MENTIONS_PREPARE = re.compile("prepare", re.IGNORECASE).search


class SeesSqlPrepare:
    """Mixed into the pool's connection class (see ``session_aware``): every
    query text that reaches the server passes one of these two methods."""

    __slots__ = ()

    def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        # Not a coroutine function of its own: it hands back asyncpg's
        # coroutine, so a query costs no extra frame.
        if _MENTIONS_PREPARE(query) is not None:
            seen_by(self)
        return super().execute(query, *args, **kwargs)  # type: ignore[misc]

    def _get_statement(self, query: str, *args: Any, **kwargs: Any) -> Any:
        if _MENTIONS_PREPARE(query) is not None:
            seen_by(self)
        return super()._get_statement(query, *args, **kwargs)  # type: ignore[misc]


def seen_by(conn: Any) -> None:
    conn._sql_prepare_seen = True


def take_sql_prepare_seen(conn: Any) -> bool:
    """Whether ``conn`` was sent SQL that may have made a prepared statement
    since the last call (which forgets it)."""
    seen: bool = getattr(conn, "_sql_prepare_seen", False)
    if seen:
        conn._sql_prepare_seen = False
    return seen
