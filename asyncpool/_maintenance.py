"""The pool's background work: connecting, closing, health checks.

Each function here runs as its own background task, so a slow or failing
connect never blocks a caller, and a caller that gives up (timeout, cancel)
never cancels a connect: its resource joins the pool for the next one.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from ._state import Entry

if TYPE_CHECKING:
    from ._pool import AsyncPool

__all__ = ["ConnectSlot", "close_entry", "connect_worker", "health_loop", "run_health_check"]

logger = logging.getLogger("asyncpool")


class ConnectSlot:
    """One reserved place in the pool's size, owned by one connect task.

    ``settled`` turns true in the same synchronous step that gives the place
    back to the pool (as a resource, or as room). If the task ends any other
    way (cancelled, even before it first ran), the pool's done-callback sees
    ``settled`` still false and gives the place back itself: so the place is
    returned exactly once on every path.
    """

    __slots__ = ("connecting", "settled")

    def __init__(self) -> None:
        self.settled = False
        #: A connect attempt is in flight (rather than a backoff sleep):
        #: ``close()`` lets it finish instead of cutting it off.
        self.connecting = False


async def connect_worker(pool: AsyncPool[Any], slot: ConnectSlot) -> None:
    """Create one resource for the slot reserved by ``PoolState.grow``.

    Retries for as long as the slot is still wanted; during an outage it
    waits its turn (``PoolState.may_connect``): one connect probes at a
    time, when the pool's backoff allows.
    """
    state = pool._state
    backend = pool._backend
    cfg = pool._config
    while True:
        while not state.may_connect():
            await pool._wait_connect_turn()
            if not state.keep_connecting():
                slot.settled = True
                return
        probe = state.begin_connect()
        slot.connecting = True
        try:
            resource = await backend.call_with_timeout(cfg.connect_timeout, pool._connector.connect)
        except Exception as exc:
            slot.connecting = False
            state.end_connect(probe)
            # One warning per outage, not one per worker per attempt.
            level = logging.WARNING if state.last_connect_error is None else logging.DEBUG
            logger.log(
                level,
                "pool%s: connect failed (%d failed in a row): %s",
                pool._label,
                state.connect_failures + 1,
                _describe(exc),
            )
            if not state.connect_failed(exc, probe):
                slot.settled = True
                return
            continue
        except BaseException:
            state.end_connect(probe)  # cancelled: the next may probe
            raise
        state.end_connect(probe)
        # From here to ``connected`` nothing awaits: the new resource cannot
        # be dropped between the two.
        slot.settled = True
        if state.last_connect_error is not None:
            logger.info("pool%s: connecting works again", pool._label)
        state.connected(resource, probe)
        return


async def close_entry(pool: AsyncPool[Any], entry: Entry[Any]) -> None:
    """Close one retired resource, bounded by ``cleanup_timeout``."""
    try:
        await pool._backend.call_with_timeout(pool._config.cleanup_timeout, pool._connector.close, entry.resource)
    except Exception as exc:
        logger.warning("pool%s: closing a resource failed: %s", pool._label, _describe(exc))


async def return_in_background(pool: AsyncPool[Any], entry: Entry[Any]) -> None:
    """Finish a release off the releasing caller's path, bounded in time.

    Used when the caller was cancelled (the clean-up happens here, where no
    cancellation aimed at the caller can reach it; the interrupted resource
    is ``suspect`` and validated too), and for every release when the pool
    resets in the background, so a handler does not wait for a reset round
    trip.
    """
    await pool._return(entry, entry.suspect, bounded=True)


async def run_health_check(pool: AsyncPool[Any]) -> None:
    """One round: evict, validate idle resources one at a time, refill.

    Only one resource is out of the idle set at any moment, so a waiter is
    never kept from a healthy resource by the check.
    """
    state = pool._state
    cfg = pool._config
    backend = pool._backend
    state.evict_idle()
    threshold = cfg.validate_after or 0.0
    for entry in list(state.idle):
        if state.closed:
            return
        if backend.now() - entry.last_ok <= threshold or not state.take_for_check(entry):
            continue
        await check_entry(pool, entry)
    state.grow()


async def check_entry(pool: AsyncPool[Any], entry: Entry[Any]) -> None:
    """Validate a CLEANING entry, bounded by ``cleanup_timeout``; it is
    handed over or kept if healthy, retired (and replaced) if not."""
    state = pool._state
    backend = pool._backend
    try:
        ok = bool(
            await backend.call_with_timeout(pool._config.cleanup_timeout, pool._connector.validate, entry.resource)
        )
    except Exception as exc:
        logger.info("pool%s: health check failed: %s", pool._label, _describe(exc))
        ok = False
    except BaseException:
        # Cancelled (maybe wrapped in an exception group) or worse.
        state.discard(entry)
        raise
    state.checked(entry, ok)


async def health_loop(pool_ref: weakref.ref[AsyncPool[Any]], interval: float) -> None:
    """Run ``run_health_check`` every ``interval`` seconds until the pool closes.

    Holds the pool only weakly between rounds, so a pool that is dropped
    without ``close()`` can still be collected.
    """
    pool = pool_ref()
    if pool is None:
        return
    backend = pool._backend
    del pool
    while True:
        await backend.sleep(interval)
        pool = pool_ref()
        if pool is None or pool._state.closed:
            return
        try:
            await run_health_check(pool)
        except backend.cancelled:
            raise
        except Exception:
            logger.exception("pool%s: health check round failed", pool._label)
        del pool


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
