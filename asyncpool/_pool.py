"""``AsyncPool``: the async shell around the decisions in ``_state``.

Every method here follows one pattern: decide synchronously in
``PoolState``, await exactly one piece of I/O (the connector's, or a wait),
then record the outcome synchronously. A cancellation can land only on that
one await, and each such await has its clean-up written right next to it.
"""

from __future__ import annotations

import itertools
import logging
import math
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar, final

from ._backends import Backend, TaskHandle, current_backend
from ._config import DEFAULTS, MAX_INT_SECONDS, PoolConfig, check_seconds
from ._connector import Connector, as_connector, capabilities
from ._errors import PoolBusy, PoolError, PoolTimeout
from ._lease import Lease
from ._maintenance import ConnectSlot, check_entry, close_entry, connect_worker, health_loop, return_in_background
from ._state import CLEANING, CLOCK_TICK, CLOSED, DIED, HANDED, LEASED, RETURNING, Entry, PoolState
from ._stats import PoolStats

__all__ = ["AsyncPool"]

R = TypeVar("R")
logger = logging.getLogger("asyncpool")
_pool_ids = itertools.count(1)


class _NotOpenWaitQueue:
    """Stands in for the backend's queue before ``open()``: nobody waits."""

    live = 0

    def hand_over(self, entry: Entry[Any]) -> bool:
        return False

    def fail_all(self, make_exc: Callable[[], BaseException]) -> None:
        return None


@final
class AsyncPool(Generic[R]):
    """A bounded, fair pool of expensive resources for async code.

    Resources come from a :class:`Connector` (or a plain async factory).
    ``acquire()`` lends one: an idle one if there is one, else a new one if
    the pool is below ``max_size``, else the caller waits, first come first
    served, until its deadline. ``release()`` resets a resource and hands it
    straight to the longest waiter.

    The pool is opened by ``async with`` or ``await pool.open()``; the first
    ``acquire()`` opens it too. It belongs to the event loop that opened it.
    """

    def __init__(
        self,
        connector: Connector[R] | Callable[[], Awaitable[R]],
        *,
        min_size: int = DEFAULTS.min_size,
        max_size: int = DEFAULTS.max_size,
        timeout: float | None = DEFAULTS.timeout,
        max_waiting: int | None = DEFAULTS.max_waiting,
        max_lifetime: float | None = DEFAULTS.max_lifetime,
        max_idle: float | None = DEFAULTS.max_idle,
        health_check_interval: float | None = DEFAULTS.health_check_interval,
        name: str | None = DEFAULTS.name,
        validate_after: float | None = DEFAULTS.validate_after,
        connect_timeout: float | None = DEFAULTS.connect_timeout,
        cleanup_timeout: float = DEFAULTS.cleanup_timeout,
        reconnect_delay: float = DEFAULTS.reconnect_delay,
        reconnect_max_delay: float = DEFAULTS.reconnect_max_delay,
        background_reset: bool | None = DEFAULTS.background_reset,
    ) -> None:
        self._config = cfg = PoolConfig(
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            health_check_interval=health_check_interval,
            name=name,
            validate_after=validate_after,
            connect_timeout=connect_timeout,
            cleanup_timeout=cleanup_timeout,
            reconnect_delay=reconnect_delay,
            reconnect_max_delay=reconnect_max_delay,
            background_reset=background_reset,
        )
        self._connector: Connector[R] = as_connector(connector)
        extras = capabilities(self._connector)
        self._reset: Callable[[R], Awaitable[None]] | None = None if extras.reset_is_noop else self._connector.reset
        if cfg.background_reset is None:
            # The connector knows whether its reset costs a round trip.
            self._background_reset = extras.background_reset and self._reset is not None
        else:
            self._background_reset = cfg.background_reset and self._reset is not None
        #: ``async with`` may reset inline in the caller (set at open).
        self._inline_release = False
        #: Awaited when ``acquire()`` did not wait (set at open; trio only).
        self._checkpoint: Callable[[], Awaitable[None]] | None = None
        # One label for the pool in logs and errors (unnamed pools are numbered).
        label = f" {name!r}" if name else f" #{next(_pool_ids)}"
        self._state: PoolState[R] = PoolState(cfg, extras.is_closed, extras.idle_limit, extras.watch, label)
        # The options the contended path reads, with ``None`` as infinity.
        self._wait_limit = math.inf if cfg.timeout is None else cfg.timeout
        self._max_waiting = math.inf if cfg.max_waiting is None else cfg.max_waiting
        self._state.waiters = _NotOpenWaitQueue()  # type: ignore[assignment]
        self._label = label
        self._backend: Backend = None  # type: ignore[assignment]  # set by open()
        self._opened = False
        self._maintenance: TaskHandle | None = None
        self._ticks: TaskHandle | None = None
        self._connects: dict[ConnectSlot, TaskHandle] = {}
        self._drained: Any = None
        self._filled: Any = None
        #: Set when anything happens that may let a waiting connect go (a
        #: probe ended, the outage ended, the pool closed); made anew after.
        self._connect_news: Any = None

    # -- introspection -------------------------------------------------------

    @property
    def closed(self) -> bool:
        """``True`` once ``close()`` has begun."""
        return self._state.closed

    @property
    def name(self) -> str | None:
        return self._config.name

    @property
    def config(self) -> PoolConfig:
        """The validated options this pool was built with."""
        return self._config

    @property
    def connector(self) -> Connector[R]:
        return self._connector

    def on_another_loop(self) -> bool:
        """``True`` if the pool was opened on an event loop other than the
        running one (where ``open()``, ``close()`` and any acquire that would
        wait raise :class:`PoolError`); ``False`` before it is opened."""
        if not self._opened:
            return False
        try:
            self._backend.check_loop()
        except PoolError:
            return True
        return False

    def stats(self) -> PoolStats:
        """A consistent snapshot of the pool's gauges and counters."""
        st = self._state
        return PoolStats(
            size=st.size,
            idle=len(st.idle),
            in_use=st.in_use,
            connecting=st.connecting,
            cleaning=st.cleaning,
            waiting=st.waiters.live,
            min_size=self._config.min_size,
            max_size=self._config.max_size,
            acquired=st.acquired,
            timeouts=st.timeouts,
            rejected=st.rejected,
            created=st.created,
            destroyed=st.destroyed,
            connect_errors=st.connect_errors,
            health_failures=st.health_failures,
        )

    def __repr__(self) -> str:
        st = self._state
        status = "closed" if st.closed else ("open" if self._opened else "not open")
        return (
            f"<AsyncPool{self._label} {status} [resources: {st.in_use} in use, {len(st.idle)} idle, "
            f"{st.connecting} connecting, {st.cleaning} cleaning, {st.size}/{self._config.max_size} "
            f"| waiting: {st.waiters.live}]>"
        )

    # -- opening ---------------------------------------------------------------

    async def __aenter__(self) -> AsyncPool[R]:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self, wait: bool = False, timeout: float | None = None) -> None:
        """Start maintenance and begin filling the pool to ``min_size``.

        With ``wait=True``, return only once ``min_size`` resources exist;
        after ``timeout`` raise ``PoolTimeout`` with the last connect error as
        its cause. By default that is the pool's ``timeout``, unless it is 0:
        never waiting for another task's release says nothing about how long
        connecting takes, so then ``connect_timeout`` bounds the wait.
        """
        check_seconds("timeout", timeout, allow_zero=True)
        self._open_now()
        if not wait:
            return
        st = self._state
        cfg = self._config
        if timeout is not None:
            limit: float | None = timeout
        elif cfg.timeout == 0:
            limit = cfg.connect_timeout
        else:
            limit = cfg.timeout
        try:
            await self._backend.call_with_timeout(limit, self._wait_filled)
        except TimeoutError:
            exc = PoolTimeout(
                f"pool{self._label} did not reach min_size={self._config.min_size} within {limit} s ({st.live} created)"
            )
            raise exc from st.last_connect_error
        if st.closed:
            raise st.closed_error(" (it closed while opening)")

    async def _wait_filled(self) -> None:
        st = self._state
        while not st.closed and st.live < self._config.min_size:
            # One event shared by every concurrent ``open(wait=True)``.
            if self._filled is None or self._filled.is_set():
                self._filled = self._backend.event()
            await self._filled.wait()

    def _open_now(self) -> None:
        st = self._state
        if st.closed:
            raise st.closed_error("; pools cannot be reopened")
        if self._opened:
            self._backend.check_loop()
            return
        self._backend = backend = current_backend()
        self._opened = True
        st.now = backend.now
        st.waiters = backend.wait_queue(st)
        st.start_connect = self._start_connect
        st.start_close = self._start_close
        st.start_check = self._start_check
        st.start_clock = self._start_clock
        st.on_change = self._on_change
        st.make_ready = backend.ready
        st.reset_counters()
        # Also under trio: a lease left normally is rarely in a cancelled
        # scope, and a reset interrupted there retires the resource; the
        # shielded path is for ``release()`` in a ``finally``.
        self._inline_release = not self._background_reset
        self._checkpoint = backend.checkpoint
        interval = self._config.health_check_interval
        if interval is not None:
            self._maintenance = backend.spawn(health_loop, weakref.ref(self), interval)
        st.grow()

    # -- hooks called by PoolState (synchronous; they only spawn) -------------

    def _start_connect(self) -> None:
        slot = ConnectSlot()
        handle = self._backend.spawn(connect_worker, self, slot, on_done=lambda: self._connect_done(slot))
        if not slot.settled:
            self._connects[slot] = handle

    def _start_clock(self) -> None:
        self._ticks = self._backend.repeat(CLOCK_TICK, self._state.tick)

    def _connect_done(self, slot: ConnectSlot) -> None:
        self._connects.pop(slot, None)
        if not slot.settled:
            # Cancelled (pool closing) or crashed: the place it held is free.
            slot.settled = True
            self._state.connect_abandoned()

    def _start_check(self, entry: Entry[R]) -> None:
        entry.owner = token = object()
        self._backend.spawn(check_entry, self, entry, on_done=lambda: self._check_done(entry, token))

    def _check_done(self, entry: Entry[R], token: object) -> None:
        if entry.state == CLEANING and entry.owner is token:
            # The check never ran (cancelled before its first step, at loop
            # shutdown): the entry is still unproven.
            self._state.discard(entry)

    def _start_close(self, entry: Entry[R]) -> None:
        # ``on_done`` also runs for a close cancelled before its first step:
        # the place is given back exactly once either way.
        self._backend.spawn(close_entry, self, entry, on_done=self._state.close_done)

    def _return_done(self, entry: Entry[R], token: object) -> None:
        # ``token`` tells this release from a later one: by the time this
        # callback runs, the entry may already have been lent and released
        # again, and that newer clean-up must not be cut short.
        if entry.state == CLEANING and entry.owner is token:
            # The background clean-up never ran (cancelled before its first
            # step, at loop shutdown): the resource cannot be trusted.
            self._state.discard(entry)

    async def _wait_connect_turn(self) -> None:
        """Wait until ``PoolState.may_connect`` may have changed: the
        backoff has passed, or the probe ended, or the pool closed."""
        st = self._state
        if self._connect_news is None or self._connect_news.is_set():
            self._connect_news = self._backend.event()
        until = st.probe_until if st.probes else st.retry_at
        wait = max(0.0, until - self._backend.now())
        try:
            await self._backend.call_with_timeout(wait, self._connect_news.wait)
        except TimeoutError:
            pass

    def _on_change(self) -> None:
        st = self._state
        if self._connect_news is not None:
            self._connect_news.set()
        if self._filled is not None and (st.closed or st.live >= self._config.min_size):
            self._filled.set()
        if self._drained is not None and st.size == 0:
            self._drained.set()

    # -- acquiring -------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> Lease[R]:
        """Borrow a resource: ``await`` it, or use it as ``async with``.

        ``timeout`` (seconds) bounds the whole wait, including validation and
        connecting; ``None`` means the pool's ``timeout``; ``0`` never waits
        for a release or a connect, but still validates an idle resource that
        is due (bounded by ``cleanup_timeout``). Raises
        ``PoolTimeout``, ``PoolBusy`` (``max_waiting`` reached) or
        ``PoolClosed``; ``ValueError`` at once for a ``timeout`` that is not
        a number of seconds >= 0.
        """
        if timeout is not None:
            # Checked here, on every call: ``Lease.__aenter__`` does not read
            # the timeout when it lends an idle resource (the hot path stays
            # as it is), so a bad one would pass while the pool is quiet and
            # fail only under load; and ``_deadline`` opens the pool before it
            # gets to check one. A plain float or int in range passes the
            # inline test; NaN, negatives and ints too large for a float
            # deadline fail it. Anything else takes the full check, which
            # refuses bools, as ``PoolConfig`` does: ``True >= 0`` holds, so
            # ``timeout=True`` would silently mean one second.
            cls: type = timeout.__class__
            if not ((cls is float and timeout >= 0.0) or (cls is int and 0 <= timeout <= MAX_INT_SECONDS)):
                check_seconds("timeout", timeout, allow_zero=True)
        lease: Lease[R] = Lease()
        lease._pool = self
        lease._timeout = timeout
        return lease

    def acquire_nowait(self) -> R:
        """Lend an idle resource that needs no validation, or raise ``PoolBusy``."""
        st = self._state
        if st.closed:
            raise st.closed_error()
        if not st.waiters.live:
            entry = st.checkout()
            if entry is not None:
                if entry.state == LEASED:
                    return entry.resource
                st.give_back(entry)
            elif self._opened:
                st.turned_away()
        raise PoolBusy(f"no idle resource in pool{self._label}")

    async def _checkpoint_lent(self, entry: Entry[R], lease: Lease[R]) -> R:
        """Make an acquire that did not wait a checkpoint too (trio).

        The entry is already lent to ``lease``; if the checkpoint is
        cancelled it is released again (reset is not needed: nobody used
        it). If it died during the checkpoint (``PoolState.died``), it is
        retired and ``lease`` acquires anew.
        """
        try:
            await self._checkpoint()  # type: ignore[misc]
        except BaseException:
            if entry.state != CLOSED:  # not destroyed by close() meanwhile
                entry.state = RETURNING
            self._state.checkin(entry)
            raise
        if entry.state == CLOSED:
            # close(timeout) destroyed it during the checkpoint: as for a
            # waiter (``PoolState.taken``), never return a destroyed resource.
            self._state.entries.pop(entry.key, None)
            raise self._state.closed_error()
        if entry.expires_at == DIED:
            # It died during the checkpoint: nobody got it, so it goes back
            # (and is retired there), and the lease tries again.
            st = self._state
            st.acquired -= 1
            entry.state = RETURNING
            entry.owner = None
            st.checkin(entry)
            return await lease._enter()
        return entry.resource

    def _deadline(self, timeout: float | None, entry: Entry[R] | None) -> float:
        """Open the pool if need be, and turn ``timeout`` into a deadline.

        ``entry`` is a CLEANING entry the caller already took, returned to
        the pool if the acquire fails here.
        """
        st = self._state
        if st.closed:
            if entry is not None:
                st.discard(entry)
            raise st.closed_error()
        if not self._opened:
            self._open_now()
        if timeout is None:
            limit = self._wait_limit
        elif timeout >= 0:
            limit = timeout
        else:  # negative or NaN
            if entry is not None:
                st.give_back(entry)
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
        return self._backend.now() + limit

    async def _acquire_until(self, deadline: float, entry: Entry[R] | None, taker: Lease[R]) -> Entry[R]:
        """The slow path: validate, wait, connect, until ``deadline``.

        ``entry`` may be a CLEANING entry the caller already took and that
        needs validation. An entry handed over while waiting comes lent and
        bound to ``taker``.

        A deadline that has already come (``timeout=0``) forbids waiting for
        another task's release or for a connect, not validating an idle
        resource: that is the pool's own I/O, so it is bounded by
        ``cleanup_timeout`` instead, as in the background. Otherwise the
        deadline bounds everything, validation included.
        """
        st = self._state
        check_by = deadline
        callers_bound = True
        if deadline <= self._backend.now():
            check_by = self._backend.now() + self._config.cleanup_timeout
            callers_bound = False
        while True:
            if st.closed:
                # Closed already, or while we validated a resource that
                # turned out dead.
                if entry is not None:
                    st.discard(entry)
                raise st.closed_error()
            if entry is None:
                if not st.waiters.live:
                    entry = st.checkout()
                if entry is None:
                    max_waiting = self._config.max_waiting
                    if max_waiting is not None and st.waiters.live >= max_waiting:
                        st.rejected += 1
                        st.turned_away()
                        raise PoolBusy(
                            f"pool{self._label} has {st.waiters.live} tasks waiting (max_waiting={max_waiting})"
                        )
                    await st.waiters.wait(deadline, taker)
                    return taker._entry
            if entry.state == LEASED:
                return entry
            if entry.suspect:
                ok = await self._validate_assigned(entry, check_by, callers_bound)
                if not ok:
                    entry = None
                    continue
            st.lend(entry)
            return entry

    async def _validate_assigned(self, entry: Entry[R], deadline: float, callers_bound: bool) -> bool:
        """Validate an entry the acquirer took, until ``deadline``: the
        caller's own (``callers_bound``), or the pool's ``cleanup_timeout``
        for a caller that may not wait (``timeout=0``)."""
        st = self._state
        backend = self._backend
        remaining = deadline - backend.now()
        if remaining <= 0:
            # No time left to check it: it goes back untouched, still due
            # for validation, rather than being judged dead for our hurry.
            st.give_back(entry)
            raise st.timeout_error()
        cleanup_timeout = self._config.cleanup_timeout
        try:
            ok = bool(
                await backend.call_with_timeout(
                    min(cleanup_timeout, remaining), self._connector.validate, entry.resource
                )
            )
        except TimeoutError:
            st.discard(entry)  # interrupted mid-check: its state is unknown
            if callers_bound and remaining < cleanup_timeout:
                # Our own deadline cut the check short: that says nothing
                # about the resource's health, and we must not try others.
                raise st.timeout_error() from None
            logger.info("pool%s: validation timed out after %s s", self._label, cleanup_timeout)
            st.health_failures += 1
            return False
        except Exception as exc:
            logger.info("pool%s: validation failed: %s: %s", self._label, type(exc).__name__, exc)
            ok = False
        except BaseException:
            # Interrupted mid-check (cancelled, also as an exception group
            # from a nursery in the connector, or any other BaseException):
            # its state is unknown, so it is retired (and replaced if anyone
            # needs one) rather than lent, kept, or leaked as CLEANING.
            st.discard(entry)
            raise
        return st.validated(entry, ok)

    # -- releasing -------------------------------------------------------------

    async def release(self, resource: R, *, discard: bool = False) -> None:
        """Give ``resource`` back: reset, then lent on or kept idle.

        With ``discard=True`` (or if reset fails) it is closed instead and
        replaced if anyone needs one. Raises ``PoolError``, changing nothing,
        if this pool did not lend ``resource`` or it was already released.
        """
        st = self._state
        entry = st.entries.get(id(resource))
        if entry is None or entry.resource is not resource:
            raise PoolError(f"release() of a resource that pool{self._label} did not lend")
        if entry.state == CLOSED:
            # Destroyed by close() under its borrower; nothing left to do.
            del st.entries[entry.key]
            return
        if entry.state == RETURNING:
            raise PoolError(f"release() of a resource that is already being released to pool{self._label}")
        if entry.state != LEASED or entry.owner is HANDED:
            # (HANDED: released, and handed to a waiter that has not run yet.)
            raise PoolError(f"release() of a resource that was already released to pool{self._label}")
        if discard:
            entry.state = RETURNING
            st.discard(entry)
            return
        await self._release_entry(entry, None)

    async def _release_entry(self, entry: Entry[R], exc: BaseException | None) -> None:
        """Release on leaving ``async with``; ``exc`` is what left the block."""
        if entry.state != LEASED:
            if entry.state == CLOSED:
                self._state.entries.pop(entry.key, None)
            return
        if exc is None:
            if self._reset_off_path():
                self._return_later(entry, False)
            else:
                await self._return(entry, False)
        elif isinstance(exc, Exception):
            await self._return(entry, True)
        else:
            # Cancelled (or KeyboardInterrupt, GeneratorExit): the caller must
            # not be held up, and under level-triggered cancellation (trio,
            # anyio) any await here would be cancelled at once. The clean-up
            # runs in the background, bounded by cleanup_timeout.
            self._return_later(entry, True)

    async def _return(self, entry: Entry[R], suspect: bool, *, bounded: bool = False) -> None:
        """Reset (and, if ``suspect``, validate) a released entry, then check
        it in; on failure or cancellation retire it. ``bounded`` puts the
        clean-up under ``cleanup_timeout`` even when not suspect (background
        clean-up, where no caller can cancel a hung reset)."""
        st = self._state
        if entry.state == LEASED:  # else CLEANING: a background clean-up
            entry.state = RETURNING
        entry.suspect = suspect
        backend = self._backend
        try:
            if backend.level_triggered:
                # Under trio a release in a cancelled scope (a ``finally``
                # after a cancellation) would otherwise always be cancelled.
                ok = await backend.call_shielded(self._config.cleanup_timeout, self._reset_and_validate, entry)
            elif suspect or bounded:
                # After an error in the body the resource may well be broken
                # and its ping hang: bounded, so the caller's exception is not
                # held up indefinitely.
                ok = await backend.call_with_timeout(self._config.cleanup_timeout, self._reset_and_validate, entry)
            else:
                if self._reset is not None:
                    await self._reset(entry.resource)
                st.checkin(entry)
                return
        except BaseException as exc:
            self._reset_failed(entry, exc)
            if isinstance(exc, Exception):
                return
            raise
        if ok:
            st.checkin(entry)
        else:
            st.health_failures += 1
            st.discard(entry)

    def _reset_failed(self, entry: Entry[R], exc: BaseException) -> None:
        """Reset (or post-error validation) raised or was cancelled.

        Either way the resource is half-cleaned: it is closed in the
        background and replaced, never lent in that state. A reset error is
        the pool's business, not the releasing caller's, so only a
        cancellation (or other ``BaseException``) propagates.
        """
        if isinstance(exc, Exception):
            logger.info(
                "pool%s: discarding a resource whose reset failed: %s: %s", self._label, type(exc).__name__, exc
            )
        self._state.discard(entry)

    async def _reset_and_validate(self, entry: Entry[R]) -> bool:
        if self._reset is not None:
            await self._reset(entry.resource)
        if not entry.suspect:
            return True
        return bool(await self._connector.validate(entry.resource))

    def _reset_off_path(self) -> bool:
        """Reset a released resource in the background rather than inline?

        Only when the connector asks for it, nobody waits, and at least as
        many resources are idle as are in use: then the releasing handler
        need not wait for the reset round trip, and whoever acquires next is
        not kept waiting for this one either. Busier than that, the task and
        timer a background reset costs outweigh the wait it saves (measured:
        at 10 tasks on a pool of 10 it cost a quarter of the throughput), and
        the resource goes straight on to the next borrower instead.
        """
        st = self._state
        return self._background_reset and not st.waiters.live and len(st.idle) >= st.in_use

    def _return_later(self, entry: Entry[R], suspect: bool) -> None:
        """Hand a released entry to a background task for its clean-up."""
        entry.suspect = suspect
        token = object()
        self._state.clean_in_background(entry, token)
        self._backend.spawn(return_in_background, self, entry, on_done=lambda: self._return_done(entry, token))

    # -- closing ---------------------------------------------------------------

    async def close(self, timeout: float | None = None) -> None:
        """Close the pool; idempotent.

        New ``acquire()`` calls and all waiters get ``PoolClosed``; idle
        resources are closed at once; lent ones when they are released, or
        forcibly once ``timeout`` seconds have passed (``None``: wait for
        them). A connect in flight is not cut off (a connector may not be
        safe to cancel half-way, as asyncpg's is not): it ends on its own
        bound, ``connect_timeout``, and what it brings is closed at once;
        only ``timeout`` passing cuts it off. Retries waiting out their
        backoff stop at once. Cancelling ``close()`` stops only the waiting:
        resources are still closed, each exactly once, as they come back.
        """
        check_seconds("timeout", timeout, allow_zero=True)
        st = self._state
        if not self._opened:
            st.closed = True
            return
        if st.closed and (self._drained is None or self._drained.is_set()):
            return  # closed already: nothing left to do, from any loop
        # Before changing anything: from another loop, the closes and
        # cancellations below would be scheduled on a loop that may be gone.
        self._backend.check_loop()
        if not st.closed:
            self._drained = self._backend.event()
            st.begin_close()
            if self._maintenance is not None:
                self._maintenance.cancel()
            if self._ticks is not None:
                self._ticks.cancel()
            no_bound = self._config.connect_timeout is None
            for slot, handle in list(self._connects.items()):
                # (With no connect_timeout a connect in flight has no bound
                # to end on: cut off, rather than wait for it forever.)
                if not slot.connecting or no_bound:
                    handle.cancel()
            self._on_change()
        drained = self._drained
        if drained is None or drained.is_set():
            return
        if timeout is None:
            await drained.wait()
            return
        try:
            await self._backend.call_with_timeout(timeout, drained.wait)
        except TimeoutError:
            logger.warning(
                "pool%s: %d resources still lent after %s s; closing them under their borrowers",
                self._label,
                st.in_use,
                timeout,
            )
            st.force_close()
            for handle in list(self._connects.values()):
                handle.cancel()
            await drained.wait()
