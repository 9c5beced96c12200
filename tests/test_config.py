"""Bad configuration fails at construction, naming the option and the value."""

from __future__ import annotations

import pytest

from asyncpool import AsyncPool

from .fakes import FakeConnector


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"max_size": 0}, "max_size"),
        ({"max_size": -3}, "max_size"),
        ({"max_size": 2.5}, "max_size"),
        ({"min_size": -1}, "min_size"),
        ({"min_size": 5, "max_size": 2}, "min_size"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": "30"}, "timeout"),
        ({"max_waiting": -1}, "max_waiting"),
        ({"max_lifetime": 0}, "max_lifetime"),
        ({"max_lifetime": -5}, "max_lifetime"),
        ({"max_idle": -1}, "max_idle"),
        ({"health_check_interval": 0}, "health_check_interval"),
        ({"validate_after": -0.1}, "validate_after"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"cleanup_timeout": None}, "cleanup_timeout"),
        ({"reconnect_delay": -1}, "reconnect_delay"),
        ({"reconnect_delay": 2.0, "reconnect_max_delay": 1.0}, "reconnect_max_delay"),
        ({"name": 42}, "name"),
    ],
)
def test_invalid_option_raises_value_error_naming_it(options: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as info:
        AsyncPool(FakeConnector(), **options)  # type: ignore[arg-type]
    bad_value = options[needle] if needle in options else None
    if bad_value is not None and needle != "min_size":
        assert repr(bad_value) in str(info.value)


def test_valid_edge_values_are_accepted() -> None:
    pool = AsyncPool(
        FakeConnector(),
        min_size=3,
        max_size=3,
        timeout=0,
        max_waiting=0,
        max_lifetime=None,
        max_idle=None,
        health_check_interval=None,
        validate_after=None,
    )
    assert pool.stats().max_size == 3
    assert pool.stats().min_size == 3


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        AsyncPool(FakeConnector(), 1, 2)  # type: ignore[call-arg]


def test_not_a_connector_is_rejected() -> None:
    with pytest.raises(TypeError, match="Connector"):
        AsyncPool(42)  # type: ignore[arg-type]


def test_the_pools_keyword_defaults_are_the_configs() -> None:
    # One place states the defaults: a default restated in AsyncPool's
    # signature could drift from PoolConfig's.
    import dataclasses
    import inspect

    from asyncpool import PoolConfig

    parameters = inspect.signature(AsyncPool.__init__).parameters
    fields = {field.name: field.default for field in dataclasses.fields(PoolConfig)}
    assert set(fields) <= set(parameters)
    for name, default in fields.items():
        assert parameters[name].default == default, name
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name


def test_background_reset_is_a_config_option_checked_at_construction() -> None:
    from asyncpool import PoolConfig

    assert AsyncPool(FakeConnector(), background_reset=True).config.background_reset is True
    assert PoolConfig().background_reset is None
    with pytest.raises(ValueError, match="background_reset"):
        PoolConfig(background_reset="no")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_unnamed_pools_are_numbered_in_errors_as_in_logs() -> None:
    from asyncpool import PoolClosed, PoolTimeout

    pool = AsyncPool(FakeConnector(), max_size=1)
    label = repr(pool).split()[1]
    assert label.startswith("#"), repr(pool)
    async with pool:
        held = await pool.acquire()
        with pytest.raises(PoolTimeout, match=f"pool {label}"):
            await pool.acquire(timeout=0)
        await pool.release(held)
    with pytest.raises(PoolClosed, match=f"the pool {label} is closed"):
        await pool.acquire()
