"""A pytest plugin that points asyncpg's own pool tests at asyncpool's
``create_pool``.

asyncpg's tests build every pool through ``asyncpg._testbase.create_pool``
(``self.create_pool(...)`` in a test case) or call ``asyncpg.create_pool``
directly; both are replaced here by :func:`asyncpool.asyncpg.create_pool`,
with the arguments the test gave. ``PGHOST`` (set by ``run_asyncpg_tests.py``)
makes asyncpg's test base use the running server instead of building a
cluster of its own.

Every test must pass, or be listed below with its reason:

* :data:`INTERNALS`: the test reads or patches asyncpg's private pool
  machinery (its holders, its queue, its maintenance task). Each of these was
  also run with those reads replaced by public calls; where the public part
  still differs, the difference is in :data:`DIFFERENCES` too.
* :data:`DIFFERENCES`: asyncpool behaves differently on purpose, or has not
  matched asyncpg yet; the README's list of differences says which and why.
  These run and must fail (``xfail(strict=True)``), so one that starts to
  pass is noticed; those marked ``hangs`` would wait forever and are skipped.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import asyncpg._testbase as testbase
import asyncpg.pool
import pytest

import asyncpool.asyncpg

_HOLDERS = "reads pool._holders (asyncpg's per-connection holders)"
_QUEUE = "reads pool._queue (asyncpg's queue of holders)"

INTERNALS: dict[str, str] = {
    "test_pool_expire_connections": _HOLDERS,
    "test_pool_floor_reconnect_honors_expired_generation": _HOLDERS,
    "test_pool_handles_query_cancel_in_release": _QUEUE,
    "test_pool_handles_task_cancel_in_acquire_with_timeout": _QUEUE,
    "test_pool_handles_task_cancel_in_release": _QUEUE,
    "test_pool_max_inactive_time_01": _HOLDERS,
    "test_pool_max_inactive_time_02": _HOLDERS,
    "test_pool_max_inactive_time_03": _HOLDERS,
    "test_pool_max_inactive_time_05": _HOLDERS,
    "test_pool_min_size_backs_off_on_target_attribute_mismatch": (
        "patches asyncio.sleep inside asyncpg.pool for its maintenance task and checks asyncpg's own backoff schedule"
    ),
    "test_pool_min_size_keeps_connections_alive": _HOLDERS,
    "test_pool_min_size_reconnect_after_expiry": _HOLDERS,
    "test_pool_min_size_restored_after_idle_connection_loss": _HOLDERS,
    "test_pool_min_size_restored_after_multiple_losses": _HOLDERS,
    "test_pool_min_size_reuses_retained_connections": _HOLDERS,
    "test_pool_min_size_restored_after_recycling": _HOLDERS,
    "test_pool_shutdown_cancels_floor_reconnect": _HOLDERS,
    "test_pool_min_size_zero_allows_full_expiry": _HOLDERS,
    "test_pool_release_after_protocol_abort": "reads the proxy's holder's _con and _in_use, and pool._queue",
    "test_pool_04": _HOLDERS,
    "test_pool_min_size_retries_closed_connection": _HOLDERS,
    "test_pool_min_size_retries_failed_reconnect": _HOLDERS,
}

#: Reason, and whether the test would hang rather than fail.
DIFFERENCES: dict[str, tuple[str, bool]] = {
    "test_pool_07": (
        "the pool grows on demand only: ten quick leases through a pool whose acquire and release do not suspend "
        "are served by the connections it has (asyncpg's release always suspends, so it opens more)",
        False,
    ),
    "test_pool_exception_in_setup_and_init": (
        "an error raised by init (at connect) is a failed connect: retried with backoff while callers wait, "
        "not raised to the acquire that caused the connect; the test then never releases what it got",
        True,
    ),
    "test_pool_release_timeout_during_cancellation": (
        "release(timeout=) is accepted and ignored: a release waiting for a cancelled query to settle is bounded "
        "by the connector's validate_timeout, after which the connection is terminated and replaced",
        False,
    ),
    "test_pool_size_and_capacity": (
        "opening grows to init_size by lending the connections beyond min_size and giving them back, so right "
        "after opening some may still be in their background reset, not idle",
        False,
    ),
}


def _create_pool(
    dsn: str | None = None, *, pool_class: Any = asyncpg.pool.Pool, loop: Any = None, **kwargs: Any
) -> Any:
    if pool_class is not asyncpg.pool.Pool:
        pytest.skip(f"a subclass of asyncpg's Pool ({pool_class.__name__}) runs asyncpg's own code")
    return asyncpool.asyncpg.create_pool(dsn, **kwargs)


def _tear_down(self: Any) -> None:
    # asyncpg's tearDown terminates each pool and waits for its private
    # maintenance task; asyncpool's pool has none to wait for.
    for pool in self._pools:
        pool.terminate()
    self._pools = []
    testbase.TestCase.tearDown(self)


def pytest_configure(config: pytest.Config) -> None:
    testbase.create_pool = _create_pool
    asyncpg.create_pool = asyncpool.asyncpg.create_pool  # type: ignore[assignment]
    testbase.ClusterTestCase.tearDown = _tear_down  # type: ignore[method-assign]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        reason = INTERNALS.get(item.name)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"asyncpg internals: {reason}"))
        difference = DIFFERENCES.get(item.name)
        if difference is not None:
            why, hangs = difference
            if hangs:
                item.add_marker(pytest.mark.skip(reason=f"deliberate difference (would hang): {why}"))
            else:
                item.add_marker(pytest.mark.xfail(reason=f"deliberate difference: {why}", strict=True))
