"""The SQL of the reset policies: what makes a session clean, and what puts
back the session state an ``init`` hook left."""

from __future__ import annotations

from collections.abc import Sequence

#: Everything a session can carry over to the next borrower, in one round
#: trip. Session authorization first, so the rest runs as the login role.
FULL_RESET_QUERY = (
    "SET SESSION AUTHORIZATION DEFAULT;"
    "RESET ROLE;"
    "RESET ALL;"
    "CLOSE ALL;"
    "UNLISTEN *;"
    "SELECT pg_advisory_unlock_all();"
    "DISCARD TEMP;"
    "DISCARD SEQUENCES;"
)
#: Drops the statements made with SQL ``PREPARE`` (``DEALLOCATE ALL`` would
#: also drop asyncpg's own statement cache, which is protocol-level:
#: ``from_sql`` false). Appended to the full reset only after a borrower sent
#: SQL that could make one (see ``_prepared``): it doubles the cost of the
#: reset's round trip, which nearly every lease would otherwise pay for nothing.
DEALLOCATE_SQL_PREPARED = (
    "DO $asyncpool$DECLARE s text; BEGIN"
    " FOR s IN SELECT name FROM pg_prepared_statements WHERE from_sql LOOP"
    " EXECUTE 'DEALLOCATE ' || quote_ident(s); END LOOP; END$asyncpool$;"
)
ROLLBACK = "ROLLBACK"
PING = "SELECT 1"
#: The connector's default ``reset_timeout``; ``create_pool`` keeps it, and
#: bounds a ``connection_class``'s own ``reset()`` with it too.
RESET_TIMEOUT = 5.0

#: What an ``init`` hook may have changed in the session, read once right
#: after it ran. ``source = 'session'`` is exactly what ``SET`` (or
#: ``set_config(..., false)``) changed; settings from the startup packet
#: (``server_settings``) have source ``client`` and survive ``RESET ALL``.
BASELINE_QUERY = (
    "SELECT session_user::text, current_setting('role'),"
    " array(SELECT name FROM pg_settings WHERE source = 'session' ORDER BY name),"
    " array(SELECT setting FROM pg_settings WHERE source = 'session' ORDER BY name)"
)


def literal(value: str) -> str:
    """``value`` as an SQL string literal. The ``E''`` form escapes the same
    way whatever ``standard_conforming_strings`` says."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def restoring_queries(
    login: str | None, session_user: str, role: str, names: Sequence[str], values: Sequence[str]
) -> list[str]:
    """The full reset query followed by what puts back the session state
    ``init`` left (``BASELINE_QUERY``'s row): one candidate, or two orders to
    try when both settings and an identity must be put back.

    Settings first, as the login role: one only a superuser may set was set
    by ``init`` before it dropped privileges, if it did. Then the session
    user, which also resets the role; then the role. But a setting granted
    (``GRANT SET ON PARAMETER``) to the role ``init`` switched to needs that
    role: then the other order.
    """
    settings = "".join(
        f"SELECT set_config({literal(n)}, {literal(v)}, false);" for n, v in zip(names, values, strict=True)
    )
    identity = ""
    if login is None or session_user != login:
        identity += f"SET SESSION AUTHORIZATION {identifier(session_user)};"
    if role != "none":
        identity += f"SET ROLE {identifier(role)};"
    if not settings or not identity:
        return [FULL_RESET_QUERY + settings + identity]
    return [FULL_RESET_QUERY + settings + identity, FULL_RESET_QUERY + identity + settings]
