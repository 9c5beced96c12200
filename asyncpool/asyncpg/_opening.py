"""Opening a ``create_pool`` pool: connect errors that retrying cannot cure
are raised at once, as ``asyncpg.create_pool`` raises them."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import asyncpg
import asyncpg.exceptions

from ._connector import AsyncpgConnector

if TYPE_CHECKING:
    from ._facade import Pool
    from ._types import Connection

#: Connect errors that retrying will not cure: ``create_pool`` raises them at
#: once instead of retrying until its timeout, as ``asyncpg.create_pool`` does.
PERMANENT_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # includes a wrong password
    asyncpg.exceptions.InvalidCatalogNameError,  # no such database
    asyncpg.exceptions.ClientConfigurationError,
    ValueError,
    TypeError,
)


@final
class Watched:
    """The connector as :class:`Pool` hands it to its :class:`AsyncPool`:
    the same, except that while the pool is opening, a connect error that
    retrying cannot cure (or an error from ``init``) is reported to
    :meth:`Pool._open_core` at once."""

    __slots__ = (
        "_connector",
        "_pool",
        "background_reset",
        "close",
        "idle_limit",
        "is_closed",
        "reset",
        "validate",
        "watch",
    )

    def __init__(self, connector: AsyncpgConnector, pool: Pool) -> None:
        self._connector = connector
        self._pool = pool
        self.background_reset = connector.background_reset
        # Bound methods, so the hot paths pay no extra call.
        self.is_closed = connector.is_closed
        self.idle_limit = connector.idle_limit
        self.watch = connector.watch
        self.validate = connector.validate
        self.reset = connector.reset
        self.close = connector.close

    def __repr__(self) -> str:
        return repr(self._connector)

    async def connect(self) -> Connection:
        connector = self._connector
        try:
            return await connector.connect()
        except Exception as exc:
            # An error from ``init`` is the application's, as a bad password
            # is the configuration's: waiting will not cure either, and
            # asyncpg raises both from opening its pool at once.
            if isinstance(exc, PERMANENT_CONNECT_ERRORS) or exc is connector.last_init_error:
                fatal = self._pool._fatal
                if fatal is not None and not fatal.done():
                    fatal.set_result(exc)
            raise
