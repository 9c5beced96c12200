"""Fuzzing the public API edge: whatever a caller passes, the pool does what
the contract says, or refuses at once with an error naming what was wrong
and is left exactly as it was.

Three doors are fuzzed: the constructor's options, the timeouts of
``acquire()``, ``open()`` and ``close()``, and ``release()``. Values come
from hypothesis strategies over every kind of thing a caller might pass (ints
and floats at and past their limits, NaN, both infinities, -0.0, bools,
strings, None, arbitrary objects), and from an explicit list of edge values
run on every backend. Hypothesis runs derandomized and without its example
database: a run is repeatable and writes nothing.

What is valid is decided here from the contract (``../shared/CONTRACT.md``)
and the documented meaning of each option, not by calling the pool's own
checks, so that a check that is too lax or too strict fails a test.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncpool import AsyncPool, PoolError, PoolTimeout
from asyncpool._state import RETURNING

from .fakes import FakeConnector, FakeResource, check_invariants

#: Repeatable, and nothing written to ``.hypothesis/``. No deadline: an
#: example's time is mostly its event loop's, which a busy machine stretches.
_FUZZ = settings(derandomize=True, database=None, deadline=None)

#: The largest int a float clock can add to without ``OverflowError``.
_FLOAT_MAX_INT = int(sys.float_info.max)

# -- what the contract accepts ------------------------------------------------

#: Options that are seconds: (``None`` accepted, 0 accepted). ``None`` turns
#: an option off; 0 makes sense only where it means "at once" (``timeout``:
#: do not wait; ``validate_after``: validate before every lend).
_SECONDS_OPTIONS: dict[str, tuple[bool, bool]] = {
    "timeout": (True, True),
    "max_lifetime": (True, False),
    "max_idle": (True, False),
    "health_check_interval": (True, False),
    "validate_after": (True, True),
    "connect_timeout": (True, False),
    "cleanup_timeout": (False, False),
    "reconnect_delay": (False, False),
    "reconnect_max_delay": (False, False),
}
#: Options that are counts: their minimum (``max_waiting`` may also be None).
_COUNT_OPTIONS = {"min_size": 0, "max_size": 1, "max_waiting": 0}
_OPTIONS = [*_COUNT_OPTIONS, *_SECONDS_OPTIONS, "name", "background_reset"]
_DEFAULTS: dict[str, object] = {"min_size": 0, "max_size": 10, "reconnect_delay": 0.1, "reconnect_max_delay": 1.0}


def _is_seconds(value: object, *, none_ok: bool, zero_ok: bool) -> bool:
    """A number of seconds: an int or float (not a bool, which is an int only
    by accident), not NaN, not negative, and usable in a float deadline. An
    int past the largest float is not (``now + value`` overflows); infinity
    is, and means never."""
    if value is None:
        return none_ok
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if value != value or value < 0 or (value == 0 and not zero_ok):
        return False
    return isinstance(value, float) or value <= _FLOAT_MAX_INT


def _is_option_value(name: str, value: object) -> bool:
    if name in _SECONDS_OPTIONS:
        none_ok, zero_ok = _SECONDS_OPTIONS[name]
        return _is_seconds(value, none_ok=none_ok, zero_ok=zero_ok)
    if name in _COUNT_OPTIONS:
        if value is None:
            return name == "max_waiting"
        # At most what a Python container can count (``sys.maxsize``).
        return isinstance(value, int) and not isinstance(value, bool) and _COUNT_OPTIONS[name] <= value <= sys.maxsize
    if name == "name":
        return value is None or isinstance(value, str)
    assert name == "background_reset"
    return value is None or isinstance(value, bool)


def _offending(options: dict[str, object]) -> set[str]:
    """The options a constructor given ``options`` may name as wrong; empty
    if it must accept them."""
    wrong = {name for name, value in options.items() if not _is_option_value(name, value)}
    given = {**_DEFAULTS, **options}
    # Each pair is compared only when both of its values are right on their
    # own; then, out of order, either may be named.
    for low, high in (("min_size", "max_size"), ("reconnect_delay", "reconnect_max_delay")):
        if low not in wrong and high not in wrong and given[low] > given[high]:  # type: ignore[operator]
            wrong |= {low, high}
    return wrong


# -- strategies --------------------------------------------------------------

_ODD_OBJECTS: list[object] = [object(), Decimal("1.5"), Fraction(1, 2), 1j, b"1", [], (), {}, FakeConnector, print]


def _any_value() -> st.SearchStrategy[object]:
    """Anything at all a caller might pass where a number is expected."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-3, max_value=12),  # where sizes and seconds change meaning
        st.integers(),
        st.floats(),  # NaN, both infinities, -0.0, subnormals, the largest float
        st.sampled_from([0.0, -0.0, 5e-324, 1e-9, 1e300, sys.float_info.max, math.inf, -math.inf, math.nan, -1e-300]),
        st.sampled_from([_FLOAT_MAX_INT, _FLOAT_MAX_INT + 1, 2**1024, 10**400, -(10**400)]),
        st.text(max_size=4),
        st.sampled_from(_ODD_OBJECTS),
    )


def _plausible(name: str) -> st.SearchStrategy[object]:
    """Values an option is likely to be given, right or wrong, so that
    combinations of options are mostly valid and their cross-checks
    (``min_size <= max_size``, ``reconnect_delay <= reconnect_max_delay``)
    are reached."""
    if name in _COUNT_OPTIONS:
        return st.one_of(st.integers(min_value=-1, max_value=12), st.none())
    if name == "name":
        return st.one_of(st.none(), st.text(max_size=3), st.just(42))
    if name == "background_reset":
        return st.one_of(st.none(), st.booleans(), st.sampled_from([0, 1, "no"]))
    return st.one_of(
        st.none(),
        st.floats(min_value=0.0, max_value=100.0),
        st.sampled_from([0, -0.0, 1, 30, 1e300, math.inf, -1, math.nan, "1"]),
    )


# -- construction --------------------------------------------------------------


def _check_construction(options: dict[str, object]) -> None:
    """Construct a pool from ``options`` (no event loop is running here) and
    hold it to the contract."""
    connector = FakeConnector()
    offending = _offending(options)
    if offending:
        with pytest.raises((ValueError, TypeError)) as info:
            AsyncPool(connector, **options)  # type: ignore[arg-type]
        message = str(info.value)
        # Word boundaries: "timeout" must not be found inside "connect_timeout".
        assert any(re.search(rf"\b{name}\b", message) for name in offending), (offending, message)
        assert connector.connect_attempts == 0
        return
    pool = AsyncPool(connector, **options)  # type: ignore[arg-type]
    for name, value in options.items():
        if name == "background_reset":
            # Not kept in ``config``; FakeConnector has a real reset to move.
            assert pool._background_reset is bool(value)
        else:
            # Exactly the object given: not rounded, converted or clamped.
            assert getattr(pool.config, name) is value, name
    # Nothing started, nothing connected: construction is pure.
    assert "not open" in repr(pool)
    assert not pool.closed
    assert pool._maintenance is None
    assert connector.connect_attempts == 0
    stats = dataclasses.asdict(pool.stats())
    assert (stats.pop("min_size"), stats.pop("max_size")) == (pool.config.min_size, pool.config.max_size)
    assert set(stats.values()) == {0}, stats


@settings(_FUZZ, max_examples=600)
@given(name=st.sampled_from(_OPTIONS), value=_any_value())
def test_any_value_of_one_option_is_kept_exactly_or_refused_naming_it(name: str, value: object) -> None:
    _check_construction({name: value})


@settings(_FUZZ, max_examples=400)
@given(options=st.fixed_dictionaries({}, optional={name: _plausible(name) for name in _OPTIONS}))
def test_any_combination_of_options_is_kept_exactly_or_refused_naming_one(options: dict[str, object]) -> None:
    _check_construction(options)


@pytest.mark.parametrize("name", _OPTIONS)
@pytest.mark.parametrize("value", [10**5000, -(10**5000)], ids=["int-5000-digits", "negative-int-5000-digits"])
def test_an_int_too_long_to_print_is_still_refused_naming_the_option(name: str, value: int) -> None:
    # ``repr`` of such an int raises ValueError itself: the message must not
    # be lost to that.
    _check_construction({name: value})


# -- acquire(timeout=...) ------------------------------------------------------

#: Thresholds between what a timeout must do on a pool with nothing to lend:
#: at most this, it gives up (at once, or nearly) ...
_GIVES_UP = 0.01
#: ... at least this, it outlasts the test and gets the next release.
_OUTLASTS = 5.0

_EDGE_TIMEOUTS = [
    pytest.param(None, id="None"),
    pytest.param(0, id="0"),
    pytest.param(0.0, id="0.0"),
    pytest.param(-0.0, id="-0.0"),
    pytest.param(5e-324, id="smallest-float"),
    pytest.param(1e-9, id="1e-9"),
    pytest.param(0.5, id="0.5"),
    pytest.param(30, id="30"),
    pytest.param(math.inf, id="inf"),
    pytest.param(1e300, id="1e300"),
    pytest.param(sys.float_info.max, id="float-max"),
    pytest.param(_FLOAT_MAX_INT, id="int-float-max"),
    pytest.param(_FLOAT_MAX_INT + 1, id="int-past-float-max"),
    pytest.param(10**5000, id="int-5000-digits"),
    pytest.param(-1, id="-1"),
    pytest.param(-1e-300, id="-1e-300"),
    pytest.param(-math.inf, id="-inf"),
    pytest.param(math.nan, id="nan"),
    pytest.param(True, id="True"),
    pytest.param(False, id="False"),
    pytest.param("1", id="str"),
    pytest.param(b"1", id="bytes"),
    pytest.param(object(), id="object"),
    pytest.param(Decimal(1), id="Decimal"),
    pytest.param(Fraction(1, 2), id="Fraction"),
    pytest.param(1j, id="complex"),
]
_BAD_TIMEOUTS = [
    p for p in _EDGE_TIMEOUTS if p.values[0] is not None and not _is_seconds(p.values[0], none_ok=False, zero_ok=True)
]
_HUGE_TIMEOUTS = [math.inf, 1e300, sys.float_info.max, _FLOAT_MAX_INT]


def _timeout_kind(timeout: object) -> str:
    """What ``acquire(timeout=...)`` must do when nothing can be lent:
    ``"invalid"`` (refused), ``"gives up"``, ``"outlasts"`` the test, or
    ``"either"`` (in between: a slow machine may go either way)."""
    if timeout is None:
        return "outlasts"  # the pool's own timeout, 30 s by default
    if not _is_seconds(timeout, none_ok=False, zero_ok=True):
        return "invalid"
    assert isinstance(timeout, (int, float))
    if timeout <= _GIVES_UP:
        return "gives up"
    return "outlasts" if timeout >= _OUTLASTS else "either"


async def _until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not predicate():
            await anyio.sleep(0)


async def _assert_refused(pool: AsyncPool[FakeResource], timeout: object) -> None:
    """A bad timeout fails at the call, naming ``timeout``, in both forms,
    and changes nothing at all: no counter, no gauge, no waiter."""
    before = pool.stats()
    with pytest.raises((ValueError, TypeError), match=r"\btimeout\b"):
        await pool.acquire(timeout)  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeError), match=r"\btimeout\b"):
        async with pool.acquire(timeout):  # type: ignore[arg-type]
            pytest.fail("entered with a bad timeout")
    check_invariants(pool)
    assert pool.stats() == before


async def _assert_works(pool: AsyncPool[FakeResource]) -> None:
    """A normal lease still succeeds, and leaves nothing held or queued."""
    with anyio.fail_after(5):
        async with pool.acquire() as resource:
            assert not resource.closed
    check_invariants(pool)
    assert pool.stats().in_use == 0
    assert pool.stats().waiting == 0


async def _acquire_on_unopened_pool(timeout: object) -> None:
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1, health_check_interval=None)
    kind = _timeout_kind(timeout)
    if kind == "invalid":
        await _assert_refused(pool, timeout)
        # Not even opened: a refused call starts nothing.
        assert "not open" in repr(pool)
        assert connector.connect_attempts == 0
    else:
        # The first acquire opens the pool and connects for itself; a timeout
        # that does not wait for the connect may give up instead.
        try:
            with anyio.fail_after(5):
                async with pool.acquire(timeout) as resource:  # type: ignore[arg-type]
                    assert not resource.closed
        except PoolTimeout:
            assert kind in ("gives up", "either")
        check_invariants(pool)
    assert pool.stats().waiting == 0
    await _assert_works(pool)
    await pool.close()
    connector.assert_all_closed_once()


async def _acquire_with_an_idle_resource(timeout: object) -> None:
    connector = FakeConnector()
    pool = AsyncPool(connector, min_size=1, max_size=1, health_check_interval=None, validate_after=None)
    await pool.open(wait=True)
    before = pool.stats()
    assert before.idle == 1
    if _timeout_kind(timeout) == "invalid":
        # Refused even though nothing would have been waited for: a bad
        # timeout must not pass while the pool is quiet and fail under load.
        await _assert_refused(pool, timeout)
    else:
        resource = await pool.acquire(timeout)  # type: ignore[arg-type]
        assert resource is connector.created[0]
        assert pool.stats().in_use == 1
        await pool.release(resource)
        assert pool.stats().acquired == before.acquired + 1
    check_invariants(pool)
    assert pool.stats().waiting == 0
    assert pool.stats().in_use == 0
    await _assert_works(pool)
    await pool.close()
    connector.assert_all_closed_once()


async def _acquire_with_nothing_to_lend(timeout: object) -> None:
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1, health_check_interval=None)
    held = await pool.acquire()
    before = pool.stats()
    kind = _timeout_kind(timeout)
    if kind in ("invalid", "gives up"):
        if kind == "invalid":
            await _assert_refused(pool, timeout)
        else:
            with anyio.fail_after(5), pytest.raises(PoolTimeout):
                await pool.acquire(timeout)  # type: ignore[arg-type]
            assert pool.stats().timeouts == before.timeouts + 1
        check_invariants(pool)
        assert pool.stats().waiting == 0
        assert pool.stats().in_use == 1  # ours, and only ours
        await pool.release(held)
    else:
        got: list[object] = []

        async def waiter() -> None:
            try:
                resource = await pool.acquire(timeout)  # type: ignore[arg-type]
            except PoolTimeout as exc:
                got.append(exc)
                return
            got.append(resource)
            await pool.release(resource)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            # Queued, with a timer (or none, for inf) that did not overflow.
            await _until(lambda: pool.stats().waiting == 1 or bool(got))
            if kind == "outlasts":
                await anyio.sleep(0.01)
                assert not got, "a wait meant to outlast the test ended early"
                assert pool.stats().waiting == 1
            await pool.release(held)
        if kind == "outlasts":
            assert got == [held], "the waiter was not handed the released resource"
        else:
            assert got == [held] or isinstance(got[0], PoolTimeout), got
        check_invariants(pool)
        assert pool.stats().waiting == 0
        assert pool.stats().in_use == 0
    await _assert_works(pool)
    await pool.close()
    connector.assert_all_closed_once()


async def _exercise_acquire_timeout(timeout: object) -> None:
    await _acquire_on_unopened_pool(timeout)
    await _acquire_with_an_idle_resource(timeout)
    await _acquire_with_nothing_to_lend(timeout)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "scenario",
    [_acquire_on_unopened_pool, _acquire_with_an_idle_resource, _acquire_with_nothing_to_lend],
    ids=["unopened", "idle", "nothing-to-lend"],
)
@pytest.mark.parametrize("timeout", _EDGE_TIMEOUTS)
async def test_acquire_timeout_edge_values(timeout: object, scenario: Callable[[object], Awaitable[None]]) -> None:
    await scenario(timeout)


@pytest.mark.anyio
@settings(_FUZZ, max_examples=100)
@given(timeout=_any_value())
async def test_acquire_takes_any_timeout_or_refuses_it_changing_nothing(timeout: object) -> None:
    # Each example runs in an event loop of its own (see anyio's plugin).
    await _exercise_acquire_timeout(timeout)


@pytest.mark.anyio
@pytest.mark.parametrize("pool_timeout", [0, -0.0, 5e-324], ids=["0", "-0.0", "smallest-float"])
async def test_acquire_timeout_none_means_the_pools_timeout(pool_timeout: float) -> None:
    # The long side (a pool timeout of inf or 1e300) is in
    # ``test_every_time_option_may_be_huge_on_a_live_pool``.
    connector = FakeConnector()
    pool = AsyncPool(connector, min_size=1, max_size=1, timeout=pool_timeout, health_check_interval=None)
    await pool.open(wait=True, timeout=5)
    held = await pool.acquire(None)  # idle: no wait needed
    with anyio.fail_after(5), pytest.raises(PoolTimeout):
        await pool.acquire(None)
    check_invariants(pool)
    assert pool.stats().waiting == 0
    assert pool.stats().in_use == 1
    await pool.release(held)
    await _assert_works(pool)
    await pool.close()
    connector.assert_all_closed_once()


# -- open(timeout=...) and close(timeout=...) ----------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", _BAD_TIMEOUTS)
async def test_open_and_close_refuse_a_bad_timeout_changing_nothing(timeout: object) -> None:
    connector = FakeConnector()
    pool = AsyncPool(connector, min_size=1, max_size=1, health_check_interval=None)
    for wait in (False, True):
        with pytest.raises((ValueError, TypeError), match=r"\btimeout\b"):
            await pool.open(wait=wait, timeout=timeout)  # type: ignore[arg-type]
    assert "not open" in repr(pool)
    assert connector.connect_attempts == 0
    await pool.open(wait=True)
    held = await pool.acquire()
    before = pool.stats()
    with pytest.raises((ValueError, TypeError), match=r"\btimeout\b"):
        await pool.close(timeout=timeout)  # type: ignore[arg-type]
    assert not pool.closed
    assert pool.stats() == before
    check_invariants(pool)
    await pool.release(held)
    await _assert_works(pool)
    await pool.close()
    connector.assert_all_closed_once()


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", _HUGE_TIMEOUTS, ids=["inf", "1e300", "float-max", "int-float-max"])
async def test_open_and_close_wait_as_long_as_needed_with_a_huge_timeout(timeout: float) -> None:
    connector = FakeConnector(connect_delay=0.01)
    pool = AsyncPool(connector, min_size=1, max_size=1, health_check_interval=None)
    with anyio.fail_after(5):
        await pool.open(wait=True, timeout=timeout)
    assert pool.stats().idle == 1
    held = await pool.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.close, timeout)
        await _until(lambda: pool.closed)
        await anyio.sleep(0.01)
        assert held.close_count == 0, "close() gave up on a lease at once"
        await pool.release(held)
    connector.assert_all_closed_once()
    assert pool.stats().size == 0


@pytest.mark.anyio
@pytest.mark.parametrize("seconds", _HUGE_TIMEOUTS, ids=["inf", "1e300", "float-max", "int-float-max"])
@pytest.mark.parametrize("background_reset", [False, True], ids=["inline-reset", "background-reset"])
async def test_every_time_option_may_be_huge_on_a_live_pool(seconds: float, background_reset: bool) -> None:
    # Every timer the pool arms from its options (waits, connects, resets,
    # validation, health checks, lifetimes) must accept these on every
    # backend, without OverflowError.
    connector = FakeConnector()
    options: dict[str, Any] = dict.fromkeys(_SECONDS_OPTIONS, seconds)
    pool = AsyncPool(connector, min_size=1, max_size=1, background_reset=background_reset, **options)
    with anyio.fail_after(5):
        await pool.open(wait=True)
        async with pool.acquire():
            pass
        # An error in the block: the resource is validated under cleanup_timeout.
        with pytest.raises(LookupError):
            async with pool.acquire():
                raise LookupError
        await _wait_on_the_pools_own_timeout(pool)
        await pool.close(timeout=seconds)
    connector.assert_all_closed_once()


async def _wait_on_the_pools_own_timeout(pool: AsyncPool[FakeResource]) -> None:
    """Wait on the pool's own (huge) timeout, then get the next release."""
    held = await pool.acquire()
    got: list[FakeResource] = []

    async def waiter() -> None:
        async with pool.acquire() as resource:
            got.append(resource)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await _until(lambda: pool.stats().waiting == 1)
        await anyio.sleep(0.01)
        assert not got
        await pool.release(held)
    assert got == [held]
    check_invariants(pool)


# -- release() -------------------------------------------------------------------


async def _pool_with_one_lent_one_idle() -> tuple[AsyncPool[FakeResource], FakeResource, FakeConnector]:
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=2, health_check_interval=None)
    lent = await pool.acquire()
    idle = await pool.acquire()
    await pool.release(idle)
    return pool, lent, connector


async def _assert_release_refused(pool: AsyncPool[FakeResource], thing: object) -> None:
    before = pool.stats()
    with pytest.raises(PoolError):
        await pool.release(thing)  # type: ignore[arg-type]
    check_invariants(pool)
    assert pool.stats() == before


@pytest.mark.anyio
@settings(_FUZZ, max_examples=50)
@given(thing=st.one_of(_any_value(), st.builds(FakeResource, st.integers(min_value=0, max_value=3))))
async def test_release_of_anything_the_pool_did_not_lend_raises_pool_error_changing_nothing(thing: object) -> None:
    pool, lent, connector = await _pool_with_one_lent_one_idle()
    await _assert_release_refused(pool, thing)
    await pool.release(lent)
    await _assert_works(pool)
    await pool.close()
    connector.assert_all_closed_once()


@pytest.mark.anyio
async def test_release_of_another_pools_resource_raises_pool_error_changing_nothing() -> None:
    pool, lent, connector = await _pool_with_one_lent_one_idle()
    other, other_lent, other_connector = await _pool_with_one_lent_one_idle()
    await _assert_release_refused(pool, other_lent)
    await _assert_release_refused(other, lent)
    for p, r in ((pool, lent), (other, other_lent)):
        await p.release(r)
        await _assert_works(p)
        await p.close()
    connector.assert_all_closed_once()
    other_connector.assert_all_closed_once()


@pytest.mark.anyio
async def test_release_on_a_pool_never_opened_raises_pool_error() -> None:
    pool = AsyncPool(FakeConnector())
    await _assert_release_refused(pool, FakeResource(1))
    assert "not open" in repr(pool)


@pytest.mark.anyio
async def test_releasing_twice_raises_pool_error_changing_nothing() -> None:
    pool, lent, connector = await _pool_with_one_lent_one_idle()
    await pool.release(lent)
    await _assert_release_refused(pool, lent)
    await _assert_works(pool)
    await pool.close()
    connector.assert_all_closed_once()


@pytest.mark.anyio
async def test_a_second_release_while_the_first_resets_raises_pool_error() -> None:
    connector = FakeConnector(reset_delay=0.05)
    pool = AsyncPool(connector, max_size=1, health_check_interval=None)
    lent = await pool.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.release, lent)
        await _until(lambda: pool._state.entries[id(lent)].state == RETURNING)
        # The first release is resetting it: still in use, not releasable.
        await _assert_release_refused(pool, lent)
    assert pool.stats().idle == 1
    await _assert_works(pool)
    await pool.close()
    connector.assert_all_closed_once()


@pytest.mark.anyio
async def test_the_previous_holder_cannot_release_what_a_waiter_was_handed() -> None:
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1, health_check_interval=None)
    held = await pool.acquire()
    got: list[FakeResource] = []

    async def waiter() -> None:
        async with pool.acquire() as resource:
            got.append(resource)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await _until(lambda: pool.stats().waiting == 1)
        await pool.release(held)
        # Handed to the waiter, which has not run yet: no await between the
        # two releases, so this is a second release by the same holder.
        with pytest.raises(PoolError):
            await pool.release(held)
    assert got == [held]
    check_invariants(pool)
    assert pool.stats().in_use == 0
    await _assert_works(pool)
    await pool.close()
    connector.assert_all_closed_once()


@pytest.mark.anyio
async def test_release_while_close_waits_for_it_closes_the_resource_once() -> None:
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1, health_check_interval=None)
    lent = await pool.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.close)
        await _until(lambda: pool.closed)
        await pool.release(lent)
    assert lent.close_count == 1
    assert pool.stats().size == 0
    # Released already, and gone: a second release is refused.
    await _assert_release_refused(pool, lent)
    connector.assert_all_closed_once()


@pytest.mark.anyio
async def test_release_of_a_resource_close_destroyed_under_its_borrower_is_a_no_op() -> None:
    connector = FakeConnector()
    pool = AsyncPool(connector, max_size=1, health_check_interval=None)
    lent = await pool.acquire()
    await pool.close(timeout=0)
    assert lent.close_count == 1
    before = pool.stats()
    await pool.release(lent)  # harmless: nothing left to do
    assert pool.stats() == before
    assert lent.close_count == 1
    check_invariants(pool)
    await _assert_release_refused(pool, lent)
    connector.assert_all_closed_once()


@pytest.mark.anyio
async def test_release_after_close_of_a_resource_released_before_raises_pool_error() -> None:
    pool, lent, connector = await _pool_with_one_lent_one_idle()
    await pool.release(lent)
    await pool.close()
    await _assert_release_refused(pool, lent)
    connector.assert_all_closed_once()
