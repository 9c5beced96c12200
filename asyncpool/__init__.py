"""asyncpool: a fast, fair, cancellation-safe pool of expensive resources.

The public surface is re-exported here; everything in the ``_``-prefixed
modules is private.
"""

from __future__ import annotations

from ._config import PoolConfig as PoolConfig
from ._connector import Connector as Connector
from ._connector import ConnectorExtras as ConnectorExtras
from ._connector import FactoryConnector as FactoryConnector
from ._errors import PoolBusy as PoolBusy
from ._errors import PoolClosed as PoolClosed
from ._errors import PoolError as PoolError
from ._errors import PoolTimeout as PoolTimeout
from ._lease import Lease as Lease
from ._pool import AsyncPool as AsyncPool
from ._stats import PoolStats as PoolStats

__version__ = "0.1.0"

__all__ = [
    "AsyncPool",
    "Connector",
    "ConnectorExtras",
    "FactoryConnector",
    "Lease",
    "PoolBusy",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "PoolStats",
    "PoolTimeout",
]
