"""Pool options, validated once at construction.

Bad configuration must fail where it is written, with the option's name and
value, rather than as a strange hang later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PoolConfig", "check_seconds"]


def check_seconds(name: str, value: float | None, *, allow_none: bool = True, allow_zero: bool = False) -> None:
    if value is None:
        if allow_none:
            return
        raise ValueError(f"{name} must be a number of seconds, got None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds or None, got {value!r}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Every tunable of a pool. All times are in seconds."""

    min_size: int = 0
    max_size: int = 10
    timeout: float | None = 30.0
    max_waiting: int | None = None
    max_lifetime: float | None = 3600.0
    max_idle: float | None = 600.0
    health_check_interval: float | None = 30.0
    name: str | None = None
    #: A resource idle for longer than this is validated before it is lent.
    validate_after: float | None = 1.0
    #: Bound on one ``connect()`` attempt.
    connect_timeout: float | None = 10.0
    #: Bound on validation, and on reset and close when the pool runs them
    #: in the background (after a cancellation, on close, in health checks).
    cleanup_timeout: float = 5.0
    #: First and largest delay between failed connect attempts.
    reconnect_delay: float = 0.1
    reconnect_max_delay: float = 5.0

    def __post_init__(self) -> None:
        _check_int("max_size", self.max_size, 1)
        _check_int("min_size", self.min_size, 0)
        if self.min_size > self.max_size:
            raise ValueError(f"min_size must be <= max_size, got min_size={self.min_size!r} max_size={self.max_size!r}")
        if self.max_waiting is not None:
            _check_int("max_waiting", self.max_waiting, 0)
        check_seconds("timeout", self.timeout, allow_zero=True)
        check_seconds("max_lifetime", self.max_lifetime)
        check_seconds("max_idle", self.max_idle)
        check_seconds("health_check_interval", self.health_check_interval)
        check_seconds("validate_after", self.validate_after, allow_zero=True)
        check_seconds("connect_timeout", self.connect_timeout)
        check_seconds("cleanup_timeout", self.cleanup_timeout, allow_none=False)
        check_seconds("reconnect_delay", self.reconnect_delay, allow_none=False)
        check_seconds("reconnect_max_delay", self.reconnect_max_delay, allow_none=False)
        if self.reconnect_max_delay < self.reconnect_delay:
            raise ValueError(f"reconnect_max_delay must be >= reconnect_delay, got {self.reconnect_max_delay!r}")
        if self.name is not None and not isinstance(self.name, str):
            raise ValueError(f"name must be a string or None, got {self.name!r}")
