"""The server's idle timeouts: read once per connection, and how long before
them a pooled connection is retired rather than lent."""

from __future__ import annotations

from typing import NamedTuple

#: The server's idle timeouts for this session, in milliseconds (``NULL``
#: where the server predates them). Read once per connection, after ``init``.
IDLE_TIMEOUTS_QUERY = (
    "SELECT (SELECT setting::float8 FROM pg_settings WHERE name = 'idle_session_timeout'),"
    " (SELECT setting::float8 FROM pg_settings WHERE name = 'idle_in_transaction_session_timeout')"
)


class IdleTimeouts(NamedTuple):
    """The server's idle timeouts for one session, in seconds (``None``: off).

    ``session`` (``idle_session_timeout``) ends a session idle outside a
    transaction: the pool retires a connection before it has been idle that
    long (see :meth:`AsyncpgConnector.idle_limit`). ``in_transaction``
    (``idle_in_transaction_session_timeout``) ends one idle inside a
    transaction; a pooled connection never is (release rolls back), so it
    only ends sessions a borrower leaves idle in a transaction, and the
    borrower's next operation raises :class:`SessionEndedError` saying so.
    """

    session: float | None
    in_transaction: float | None


def idle_margin(timeout: float) -> float:
    """How long before the server's ``idle_session_timeout`` a connection is
    retired rather than lent: a quarter of it, at least 50 ms (a lease's
    first query must reach the server in time), at most 5 s."""
    return min(max(timeout / 4, 0.05), 5.0)
