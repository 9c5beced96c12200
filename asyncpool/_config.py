"""Pool options, validated once at construction.

Bad configuration must fail where it is written, with the option's name and
value, rather than as a strange hang later.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

__all__ = ["MAX_INT_SECONDS", "PoolConfig", "check_flag", "check_seconds"]

#: The largest whole number of seconds a deadline can be made of: the clock
#: is a float, and ``now + seconds`` raises ``OverflowError`` for an int past
#: the largest float. (A float cannot be past it: it is ``math.inf`` then.)
MAX_INT_SECONDS = int(sys.float_info.max)


def check_seconds(name: str, value: float | None, *, allow_none: bool = True, allow_zero: bool = False) -> None:
    if value is None:
        if allow_none:
            return
        raise ValueError(f"{name} must be a number of seconds, got None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        or_none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a number of seconds{or_none}, got {_show(value)}")
    # ``value != value`` is the NaN test: ``math.isnan`` converts an int to a
    # float first, which raises ``OverflowError`` for a huge one.
    if value != value or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, got {_show(value)}")
    if isinstance(value, int) and value > MAX_INT_SECONDS:
        # Refused here rather than overflowing the first deadline made of it.
        raise ValueError(
            f"{name} must be at most {MAX_INT_SECONDS:.3g} seconds (math.inf for no limit), got {_show(value)}"
        )


def check_flag(name: str, value: bool | None) -> None:
    """``True``, ``False`` or ``None`` (let the connector decide), nothing else:
    any object has a truth value, so a typo like ``"no"`` would mean yes."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name} must be True, False or None, got {_show(value)}")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {_show(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {_show(value)}")
    if value > sys.maxsize:
        # More than any Python container can count; and past 4300 digits
        # even printing the pool or its stats would raise.
        raise ValueError(f"{name} must be <= sys.maxsize, got {_show(value)}")


def _show(value: object) -> str:
    """``repr(value)`` for an error message, which must not fail itself.

    ``repr`` raises ``ValueError`` for an int of more than 4300 digits
    (``sys.set_int_max_str_digits``), which would replace the message that
    names the option with one that does not.
    """
    try:
        return repr(value)
    except Exception:
        if isinstance(value, int):
            return f"an int of {value.bit_length()} bits"
        return f"a {type(value).__name__} that cannot be printed"


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
    reconnect_max_delay: float = 1.0
    #: Reset released resources in a background task (``None``: as the
    #: connector's ``background_reset`` says).
    background_reset: bool | None = None

    def __post_init__(self) -> None:
        _check_int("max_size", self.max_size, 1)
        _check_int("min_size", self.min_size, 0)
        if self.min_size > self.max_size:
            raise ValueError(
                f"min_size must be <= max_size, got min_size={_show(self.min_size)} max_size={_show(self.max_size)}"
            )
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
        check_flag("background_reset", self.background_reset)
        if self.reconnect_max_delay < self.reconnect_delay:
            raise ValueError(f"reconnect_max_delay must be >= reconnect_delay, got {self.reconnect_max_delay!r}")
        if self.name is not None and not isinstance(self.name, str):
            raise ValueError(f"name must be a string or None, got {_show(self.name)}")


#: The defaults, from the one place that states them (``AsyncPool``'s
#: keyword arguments take theirs from here).
DEFAULTS = PoolConfig()
