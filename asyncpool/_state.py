"""Every decision the pool makes, in plain synchronous code.

Who gets which resource, when to create one, when to retire one: all of it
happens here, in methods that never await. A cancellation can only land at an
``await``, so it can never interrupt one of these state changes half-way; the
async shell in ``_pool.py`` awaits the connector and then calls in here to
record the outcome. The I/O these decisions call for (connecting, closing)
is started through two synchronous hooks that spawn background tasks.

Accounting, true at every instant::

    size == len(idle) + in_use + connecting + cleaning <= max_size

``in_use`` counts what callers hold (lent, or being released by the caller
itself); ``cleaning`` what the pool itself works on: validations, resets
after a cancelled or background release, and closes that have not finished.
A resource being closed still exists (a server still holds its session), so
it counts in ``size`` until its close is done, and is not replaced past
``max_size`` before then.

Taking a resource back is stamped with ``PoolState.coarse``, a reading of
the clock that a timer refreshes every ``CLOCK_TICK`` seconds while leases
happen, rather than with a clock call (which was a twelfth of an uncontended
lease). The stamp is never later than the truth, so a resource can only look
idle for longer than it is: it may be validated up to a tick (or a late
timer) early, never late, since lending compares it with the precise clock.
While the pool is idle the timer stops and taking back uses the clock too.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from ._backends import WaitAgain
from ._config import PoolConfig
from ._errors import PoolClosed, PoolTimeout


class DeadOnArrival(ConnectionError):
    """The cause of a ``PoolTimeout`` when connects brought resources that
    were already closed (a server that accepts and ends every session)."""


if TYPE_CHECKING:
    from ._backends import Taker, WaitQueue

__all__ = [
    "ASSIGNED",
    "CLEANING",
    "CLOCK_TICK",
    "CLOSED",
    "DIED",
    "HANDED",
    "IDLE",
    "LEASED",
    "RETURNING",
    "DeadOnArrival",
    "Entry",
    "PoolState",
    "backoff_delay",
]

R = TypeVar("R")
logger = logging.getLogger("asyncpool")

# Where an entry is. ``in_use`` counts LEASED and RETURNING; ``cleaning``
# counts CLEANING, and CLOSED entries whose close has not finished.
IDLE = 0  #: in ``idle``, ready to lend
ASSIGNED = 1  #: in the middle of a synchronous decision; never seen across an await
LEASED = 2  #: lent to a caller
RETURNING = 3  #: its caller is releasing it (reset in the caller's own task)
CLEANING = 4  #: the pool works on it: validation, or a reset in the background
CLOSED = 5  #: gone for good (its close() runs or ran)

_STATE_NAMES = ("idle", "assigned", "leased", "returning", "cleaning", "closed")

#: ``Entry.owner`` of an entry handed over to a waiter that has not run yet:
#: lent, but not releasable by anyone until its new borrower has it.
HANDED = object()


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with jitter: uniform in ``[d/2, d]``, ``d`` doubling
    from ``initial`` with each ``attempt`` (counted from 0) up to ``maximum``.

    The jitter keeps a fleet of pools that lost the same server from
    reconnecting in lockstep when it comes back. The exponent is capped so
    that a long outage cannot overflow it.
    """
    delay = min(maximum, initial * 2.0 ** min(attempt, 64))
    return delay * (0.5 + random.random() / 2)


#: How often the coarse clock (``PoolState.coarse``) is refreshed while the
#: pool is busy, in seconds: a timer callback 50 times a second, against a
#: clock call on each of up to hundreds of thousands of releases.
CLOCK_TICK = 0.02

#: ``Entry.expires_at`` of an entry its connector reported dead (``died``):
#: every path that takes an entry back retires an expired one. A constant,
#: so that testing for it allocates no float.
DIED = -math.inf

#: Lifetimes are shortened by up to this fraction, at random, so resources
#: created together do not all expire together.
LIFETIME_JITTER = 0.1


class Entry(Generic[R]):
    """The pool's record of one resource."""

    __slots__ = (
        "created_at",
        "expires_at",
        "idle_limit",
        "idle_since",
        "key",
        "last_ok",
        "lend_by",
        "owner",
        "ready",
        "resource",
        "state",
        "suspect",
        "window",
    )

    def __init__(self, resource: R, now: float, lifetime: float | None) -> None:
        self.resource = resource
        self.key = id(resource)
        self.created_at = now
        self.expires_at = math.inf if lifetime is None else now + lifetime * (1.0 - LIFETIME_JITTER * random.random())
        #: Idle longer than this since it last worked (``last_ok``), it is
        #: retired rather than lent: its server ends sessions idle that long
        #: (``Connector.idle_limit``).
        self.idle_limit = math.inf
        #: How long after ``last_ok`` it may be lent without a check: the
        #: pool's validation window, or less if ``idle_limit`` is shorter.
        self.window = math.inf
        #: When it was last known to work (created, reset or validated).
        self.last_ok = now
        self.idle_since = now
        #: While idle: until when it may be lent without being validated
        #: (nor retired for its age); one comparison on the hot path.
        self.lend_by = -math.inf
        #: Awaited by ``async with`` to lend it without a checkpoint (see
        #: ``Backend.ready``); set when it joins an open pool.
        self.ready: Awaitable[R] | None = None
        self.state = ASSIGNED
        #: Who may release the current lend: the ``Lease`` that took it, or
        #: a token of a background clean-up. Every lend replaces it, so a
        #: stale holder can never release (or retire) a later lend; an
        #: identity test, cheaper on the hot path than a counter.
        self.owner: object = None
        #: Must be validated before anyone gets it.
        self.suspect = False

    def __repr__(self) -> str:
        return f"<Entry {type(self.resource).__name__} {_STATE_NAMES[self.state]}>"


class PoolState(Generic[R]):
    """The bookkeeping and decisions of one pool (no awaits in here)."""

    __slots__ = (
        "acquired",
        "cfg",
        "cleaning",
        "clock_enabled",
        "clock_mark",
        "closed",
        "closing",
        "coarse",
        "connect_errors",
        "connect_failures",
        "connecting",
        "created",
        "destroyed",
        "entries",
        "health_failures",
        "idle",
        "idle_limit",
        "is_closed",
        "label",
        "last_connect_error",
        "make_ready",
        "now",
        "on_change",
        "probe_until",
        "probes",
        "rejected",
        "retry_at",
        "size",
        "start_check",
        "start_clock",
        "start_close",
        "start_connect",
        "timeouts",
        "validate_window",
        "waiters",
        "watch",
    )

    def __init__(
        self,
        config: PoolConfig,
        is_closed: Callable[[R], bool] | None,
        idle_limit: Callable[[R], float | None] | None = None,
        watch: Callable[[R, Callable[[], None]], None] | None = None,
        label: str = "",
    ) -> None:
        self.cfg = config
        #: How errors and log lines name the pool: `` 'name'`` or `` #N``.
        self.label = label
        #: The connector's cheap, local "is it closed?" check, run on every
        #: lend; ``None`` if it has none.
        self.is_closed = is_closed
        #: The connector's idle limit for a new resource, if it has one.
        self.idle_limit = idle_limit
        #: The connector's way to say at once that a resource died, if any.
        self.watch = watch
        #: Idle time after which an entry is validated before lending.
        self.validate_window = math.inf if config.validate_after is None else config.validate_after
        #: The clock as of the last tick, never ahead of it; ``math.inf``
        #: while the ticks are off, which sends the release path to the
        #: precise clock (and, through ``clock()``, turns the ticks back on).
        self.coarse = math.inf
        #: Stamps lag by a tick, more on a busy loop whose timers run late.
        #: Under ten ticks of window that would validate too many resources
        #: early: the ticks stay off and stamps precise.
        self.clock_enabled = self.validate_window >= 10 * CLOCK_TICK
        #: ``acquired`` at the last tick: no lend since means the pool is idle.
        self.clock_mark = 0
        self.idle: deque[Entry[R]] = deque()
        #: Every entry that exists, by ``id(resource)``, so ``release()`` can
        #: find it; plus lent ones that ``close()`` destroyed under their
        #: borrower, until they are released.
        self.entries: dict[int, Entry[R]] = {}
        #: Everything that exists: idle, in use, connecting and cleaning.
        self.size = 0
        #: CLEANING entries plus the closes in flight (``closing``).
        self.cleaning = 0
        self.closing = 0
        self.connecting = 0
        self.closed = False
        #: Set while the latest connect attempt failed.
        self.last_connect_error: BaseException | None = None
        #: Failed rounds of connecting in a row, and when the next may start:
        #: the backoff is the pool's, not each connect's (see
        #: ``may_connect``), so neither a new waiter nor a refused acquire
        #: can bypass it.
        self.connect_failures = 0
        self.retry_at = -math.inf
        #: During an outage, one connect at a time tries (the probe): how many
        #: run (more than one only once a hung one's claim lapsed), and
        #: until when the latest holds its claim.
        self.probes = 0
        self.probe_until = -math.inf
        self.now: Callable[[], float] = _no_clock
        self.waiters: WaitQueue = None  # type: ignore[assignment]  # set by open()
        # Hooks into the async shell; each only spawns a background task.
        self.start_connect: Callable[[], None] = _nothing
        self.start_close: Callable[[Entry[R]], None] = _nothing
        self.start_check: Callable[[Entry[R]], None] = _nothing
        self.start_clock: Callable[[], None] = _nothing
        self.on_change: Callable[[], None] = _nothing
        self.make_ready: Callable[[R], Awaitable[R] | None] = _nothing
        self.reset_counters()

    def reset_counters(self) -> None:
        self.acquired = 0
        self.timeouts = 0
        self.rejected = 0
        self.created = 0
        self.destroyed = 0
        self.connect_errors = 0
        self.health_failures = 0

    @property
    def in_use(self) -> int:
        """Entries held by callers: lent, or being released by the caller.

        Derived rather than counted, so the hot path (lend, inline release)
        has no counter to keep right.
        """
        return self.size - len(self.idle) - self.cleaning - self.connecting

    @property
    def live(self) -> int:
        """Resources that exist and are not being closed: what ``min_size``
        is about."""
        return self.size - self.closing - self.connecting

    # -- the coarse clock ----------------------------------------------------

    def clock(self) -> float:
        """Read the precise clock, and turn the coarse one back on if it is off.

        Called where the hot paths fall back to (``checkout``, ``checkin``):
        the first release after an idle spell takes the slow path and
        restarts the ticks, and the ones after it take the fast one again.
        Never raises for the ticks: a timer that cannot start (a call from
        another thread, a closed loop) leaves them off, and the precise clock
        in use, rather than ``coarse`` frozen.
        """
        now = self.now()
        if self.coarse == math.inf and self.clock_enabled and not self.closed:
            try:
                self.start_clock()
            except Exception:
                logger.debug("the coarse clock could not start; using the precise one", exc_info=True)
                return now
            self.coarse = now
            self.clock_mark = self.acquired
        return now

    def tick(self) -> bool:
        """Refresh ``coarse``, every ``CLOCK_TICK`` while the ticks are on.

        Returns ``False``, and turns the coarse clock off, once a whole tick
        passed without a lend or the pool closed: an idle pool wakes nobody.
        """
        if self.closed or self.acquired == self.clock_mark:
            self.coarse = math.inf
            return False
        self.clock_mark = self.acquired
        self.coarse = self.now()
        return True

    # -- lending ------------------------------------------------------------

    def checkout(self) -> Entry[R] | None:
        """Take the warmest idle entry, or ``None``.

        The entry comes back LEASED when it can be lent at once, or CLEANING
        with ``suspect`` set when it must be validated first (the caller
        then validates it and ``lend``s it, or ``give_back``s it). Expired
        entries and ones the connector knows are closed are retired on the
        way.
        """
        idle = self.idle
        if not idle:
            return None
        now = self.clock()
        validate_window = self.validate_window
        while idle:
            entry = idle.pop()
            if (
                entry.expires_at <= now
                or now - entry.last_ok >= entry.idle_limit
                or (self.is_closed is not None and self._known_closed(entry))
            ):
                entry.state = ASSIGNED
                self.discard(entry)
                continue
            if now - entry.last_ok > validate_window:
                entry.state = CLEANING
                entry.owner = None  # no earlier clean-up's token may touch it
                self.cleaning += 1
                entry.suspect = True
                return entry
            entry.state = LEASED
            entry.owner = None
            self.acquired += 1
            return entry
        return None

    def drop_if_closed(self, entry: Entry[R]) -> bool:
        """Retire the warmest idle ``entry`` if the connector knows it is
        closed; ``True`` if it did."""
        if not self._known_closed(entry):
            return False
        if entry.state == CLOSED:
            return True  # the connector reported it dead as it answered (``died``)
        self.idle.pop()
        entry.state = ASSIGNED
        self.discard(entry)
        return True

    def _known_closed(self, entry: Entry[R]) -> bool:
        try:
            dead = self.is_closed(entry.resource)  # type: ignore[misc]
        except Exception:
            logger.exception("is_closed() raised; treating the resource as dead")
            dead = True
        if dead:
            self.health_failures += 1
        return dead

    def lend(self, entry: Entry[R]) -> None:
        """An entry its acquirer validated (CLEANING) goes to that acquirer."""
        if self.closed:
            self.discard(entry)
            raise self.closed_error()
        self.cleaning -= 1
        entry.state = LEASED
        entry.suspect = False
        entry.owner = None
        self.acquired += 1

    def validated(self, entry: Entry[R], ok: bool) -> bool:
        """Outcome of an acquirer validating the CLEANING ``entry`` it took;
        ``True`` if it may be lent."""
        if entry.state == CLOSED:
            return False  # retired while it was checked (close, or it died)
        if entry.expires_at == DIED:
            # It died after its check answered: ``died`` counted it.
            self.discard(entry)
            return False
        if ok:
            entry.last_ok = self.now()
            entry.suspect = False
        else:
            self.health_failures += 1
            self.discard(entry)
        return ok

    def checkin(self, entry: Entry[R]) -> None:
        """A released entry was reset (RETURNING in its caller, CLEANING in
        the background): lend it on, keep it, or retire it."""
        if entry.state == CLOSED:
            # close() destroyed it while it was being reset.
            self.entries.pop(entry.key, None)
            return
        if entry.state == CLEANING:
            self.cleaning -= 1
            entry.state = RETURNING
        # The clean-up is over: its token (``AsyncPool._return_done``) no
        # longer applies to whatever happens to the entry next.
        entry.owner = None
        now = self.clock()
        if self.closed or entry.expires_at <= now:
            self.discard(entry)
            return
        entry.last_ok = now
        entry.suspect = False
        self._place(entry, now)

    def give_back(self, entry: Entry[R]) -> None:
        """An acquirer gave up on ``entry``: it was handed over and never
        taken (LEASED), or taken from idle to validate and never lent
        (CLEANING)."""
        if entry.state == CLOSED:
            # Retired meanwhile (it died, see ``died``, or close() destroyed it).
            self.entries.pop(entry.key, None)
            return
        unused = entry.state == CLEANING
        if unused:
            self.cleaning -= 1
            entry.state = ASSIGNED
        elif entry.state == LEASED:
            # Handed over as lent (see ``_hand_over``), but never taken.
            self.acquired -= 1
            entry.state = ASSIGNED
        if self.closed:
            self.discard(entry)
            return
        idle_since = entry.idle_since
        self._place(entry, self.now())
        if unused and entry.state == IDLE:
            # Nobody used it: its idle age still decides max_idle eviction.
            entry.idle_since = idle_since

    def checked(self, entry: Entry[R], ok: bool) -> None:
        """Outcome of a background check (health check, or a suspect entry
        on its way to a waiter) of a CLEANING entry."""
        if entry.state == CLOSED:
            return  # force_close() retired it while it was being checked
        if entry.expires_at == DIED:
            self.discard(entry)  # it died after the check answered: ``died`` counted it
            return
        if not ok:
            self.health_failures += 1
            self.discard(entry)
            return
        self.cleaning -= 1
        entry.state = ASSIGNED
        entry.suspect = False
        entry.owner = None  # the check is over: its token no longer applies
        entry.last_ok = self.now()
        if self.closed:
            self.discard(entry)
        elif self.waiters.live and self._hand_over(entry):
            return
        else:
            # Back where it came from: the old end, so its idle age still
            # decides when it is evicted.
            entry.state = IDLE
            entry.lend_by = self._lend_by(entry)
            self.idle.appendleft(entry)

    def _place(self, entry: Entry[R], now: float) -> None:
        """An in-use entry is free: the longest waiter gets it, else it idles."""
        if self.waiters.live and self._hand_over(entry):
            return
        entry.state = IDLE
        entry.idle_since = now
        entry.lend_by = self._lend_by(entry)
        self.idle.append(entry)

    def _lend_by(self, entry: Entry[R]) -> float:
        """Until when an idle ``entry`` may be lent unchecked (``Entry.lend_by``;
        ``Lease.__aexit__`` computes it inline). A suspect one never may."""
        if entry.suspect:
            return -math.inf
        return min(entry.last_ok + entry.window, entry.expires_at)

    def _hand_over(self, entry: Entry[R]) -> bool:
        """Give ``entry`` to the longest waiter, if one is still waiting.

        It is lent in the same step, so the woken waiter has nothing left to
        decide. A suspect entry is validated first, in the background (see
        ``checked``), and handed over from there if it is healthy.
        """
        if entry.suspect:
            entry.state = CLEANING
            self.cleaning += 1
            self.start_check(entry)
            return True
        entry.state = LEASED
        entry.owner = HANDED
        if self.waiters.hand_over(entry):
            self.acquired += 1
            return True
        entry.state = ASSIGNED
        return False

    # -- creating and retiring ---------------------------------------------

    def grow(self) -> None:
        """Start connects for waiters nobody is connecting for, and up to min_size."""
        if self.closed:
            return
        cfg = self.cfg
        need = max(self.waiters.live - self.connecting, cfg.min_size - self.live - self.connecting)
        room = cfg.max_size - self.size
        for _ in range(min(need, room)):
            self._start_one()

    def _start_one(self) -> None:
        self.size += 1
        self.connecting += 1
        self.start_connect()

    def turned_away(self) -> None:
        """An acquire found nothing idle and could not wait (``max_waiting``
        reached, no time left, ``acquire_nowait``): start one connect, unless
        one beyond those for the waiters is under way. Otherwise a pool that
        nobody may wait on (``max_waiting=0``, ``timeout=0``) never grows."""
        if (
            not self.closed
            and not self.idle
            and self.size < self.cfg.max_size
            and self.connecting <= self.waiters.live
            and self.now() >= self.retry_at
        ):
            self._start_one()

    def waiter_enqueued(self) -> None:
        if self.size < self.cfg.max_size and self.waiters.live > self.connecting:
            self.grow()

    def connected(self, resource: R, probe: bool = False) -> Entry[R]:
        """A connect attempt produced ``resource`` (``probe``: it was the
        outage's probe, see ``may_connect``)."""
        self.connecting -= 1
        self.created += 1
        now = self.now()
        entry = Entry(resource, now, self.cfg.max_lifetime)
        entry.window = self.validate_window
        if self.idle_limit is not None:
            try:
                limit = self.idle_limit(resource)
            except Exception:
                logger.exception("idle_limit() raised; the resource gets none")
                limit = None
            if limit is not None:
                entry.idle_limit = limit
                entry.window = min(entry.window, limit)
        entry.ready = self.make_ready(resource)
        self.entries[entry.key] = entry
        if self.watch is not None:
            try:
                self.watch(resource, lambda: self.died(entry))
            except Exception:
                logger.exception("watch() raised; the resource is checked when lent instead")
        if self.closed:
            self.discard(entry)
        elif entry.expires_at == DIED or (self.is_closed is not None and self._known_closed(entry)):
            # Dead on arrival (reported by ``watch`` already, or known to the
            # connector): it may have died in the very turn its connect
            # returned, before anyone was there to hear of it. That is a
            # failed connect: the backoff applies, or a server that accepts
            # and at once ends every session would be hammered in a loop.
            self._failed(DeadOnArrival("connect brought a resource that was already closed"), probe)
            self.discard(entry)
        else:
            self.last_connect_error = None
            self.connect_failures = 0  # the outage, if any, is over
            self.retry_at = -math.inf
            self._place(entry, now)
        self.on_change()
        return entry

    def _failed(self, exc: BaseException, probe: bool) -> None:
        """Record a failed connect. The first failure of an outage and each
        failed probe take the backoff a step further; connects that were
        already under way when the outage began fail without escalating it."""
        self.connect_errors += 1
        self.last_connect_error = exc
        if probe or not self.connect_failures:
            cfg = self.cfg
            self.retry_at = self.now() + backoff_delay(
                self.connect_failures, cfg.reconnect_delay, cfg.reconnect_max_delay
            )
            self.connect_failures += 1

    def may_connect(self) -> bool:
        """May a connect start now? Always, unless connecting is failing:
        then one at a time (the probe), once the backoff has passed. The
        others wait for its outcome; when it succeeds they all go at once
        (``connected`` ends the outage). So a server that is down sees one
        attempt per backoff step, however many tasks wait, and one that comes
        back gets the whole pool's connects at once."""
        if not self.connect_failures:
            return True
        now = self.now()
        return now >= self.retry_at and (not self.probes or now >= self.probe_until)

    def begin_connect(self) -> bool:
        """A connect starts (``may_connect`` said so); ``True`` if it is the
        outage's probe. A probe that hangs (no ``connect_timeout``) holds its
        claim for ``reconnect_max_delay`` only, then another may try."""
        if self.connect_failures:
            self.probes += 1
            self.probe_until = self.now() + (self.cfg.connect_timeout or self.cfg.reconnect_max_delay)
            return True
        return False

    def end_connect(self, probe: bool) -> None:
        """A connect ended in any way (before ``connected``/``connect_failed``)."""
        if probe:
            self.probes -= 1
            self.on_change()

    def connect_failed(self, exc: BaseException, probe: bool) -> bool:
        """A connect attempt failed; ``True`` if it should be retried."""
        self._failed(exc, probe)
        self.on_change()
        return self.keep_connecting()

    def keep_connecting(self) -> bool:
        """Is a connect slot still wanted? If not, give it up."""
        if not self.closed and (self.waiters.live >= self.connecting or self.size - self.closing <= self.cfg.min_size):
            return True
        self.connect_abandoned()
        return False

    def connect_abandoned(self) -> None:
        self.connecting -= 1
        self.size -= 1
        self.on_change()

    def discard(self, entry: Entry[R]) -> None:
        """Retire an entry that is not in ``idle``; close it in the background.

        It counts in ``size`` and ``cleaning`` until ``close_done``. Safe to
        call twice: the second call does nothing, so a resource is closed
        exactly once however many paths find it dead.
        """
        state = entry.state
        if state == CLOSED:
            return
        if state != CLEANING:
            self.cleaning += 1
        if state != LEASED or not self.closed:
            # A lent entry destroyed by close() stays known until released,
            # so that release() is a harmless no-op rather than an error.
            self.entries.pop(entry.key, None)
        entry.state = CLOSED
        self.closing += 1
        self.destroyed += 1
        self.start_close(entry)
        self.grow()
        self.on_change()

    def close_done(self) -> None:
        """A close started by ``discard`` has finished (in any way): the
        resource is gone and its place is free."""
        self.closing -= 1
        self.cleaning -= 1
        self.size -= 1
        self.grow()
        self.on_change()

    def evict_idle(self) -> None:
        """Retire idle entries past their lifetime, or idle too long above min_size."""
        now = self.now()
        max_idle = self.cfg.max_idle
        keep: deque[Entry[R]] = deque()
        retire: list[Entry[R]] = []
        surplus = self.live - self.cfg.min_size
        # Oldest-idle first, so a surplus is trimmed from the cold end.
        for entry in self.idle:
            if entry.expires_at <= now or now - entry.last_ok >= entry.idle_limit:
                retire.append(entry)
            elif max_idle is not None and surplus > 0 and now - entry.idle_since > max_idle:
                retire.append(entry)
                surplus -= 1
            else:
                keep.append(entry)
        if retire:
            self.idle = keep
            for entry in retire:
                self.discard(entry)

    def take_for_check(self, entry: Entry[R]) -> bool:
        """Take an idle entry out for a health check, if it is still idle."""
        if entry.state != IDLE:
            return False
        try:
            self.idle.remove(entry)
        except ValueError:  # pragma: no cover - defensive
            return False
        entry.state = CLEANING
        entry.owner = None
        self.cleaning += 1
        return True

    def clean_in_background(self, entry: Entry[R], token: object) -> None:
        """A LEASED entry was released to a background clean-up (reset, and
        validation if ``suspect``), owned by ``token``: its caller holds it
        no more."""
        entry.state = CLEANING
        entry.owner = token
        self.cleaning += 1

    def died(self, entry: Entry[R]) -> None:
        """The connector says ``entry``'s resource is dead (``Connector.watch``).

        Idle, it is retired at once. Handed to a waiter that has not run
        yet, it is retired too, and the waiter waits again, first in line
        (see ``taken``): nobody is lent what is known dead. Held by a caller,
        or being cleaned (whose I/O may even have finished, its task not yet
        resumed), its lifetime ends now: every path that takes an entry back
        retires an expired one, so it is retired there, and its clean-up and
        its close never run at the same time.
        """
        state = entry.state
        if state == CLOSED or entry.expires_at == DIED:
            return  # retired already, or reported already
        entry.expires_at = DIED
        self.health_failures += 1
        if state == IDLE:
            try:
                self.idle.remove(entry)
            except ValueError:  # pragma: no cover - defensive
                return
            entry.state = ASSIGNED
        elif state == LEASED and entry.owner is HANDED:
            self.acquired -= 1  # handed over, never taken
        else:
            return
        self.discard(entry)

    def taken(self, entry: Entry[R], taker: Taker) -> R:
        """A waiter runs with the ``entry`` it was handed: bind it to
        ``taker`` and give it its resource. If the entry was retired before
        the waiter ran, nobody will release it: then the waiter gets
        ``PoolClosed`` if ``close()`` did it, and otherwise (the resource
        died, see ``died``) waits again: ``WaitAgain``."""
        if entry.state == CLOSED:
            self.entries.pop(entry.key, None)
            if self.closed:
                raise self.closed_error()
            raise WaitAgain
        taker._entry = entry
        entry.owner = taker
        return entry.resource

    # -- waiting -------------------------------------------------------------

    def timeout_error(self) -> BaseException:
        self.timeouts += 1
        exc = PoolTimeout(
            f"no resource became available in time (pool{self.label}: "
            f"{self.in_use} in use, {len(self.idle)} idle, {self.connecting} connecting, "
            f"{self.cleaning} cleaning, max_size={self.cfg.max_size})"
        )
        if self.last_connect_error is not None:
            # The pool was trying to connect for this waiter and failing:
            # that failure is the real reason, so chain it.
            exc.__cause__ = self.last_connect_error
        return exc

    def closed_error(self, detail: str = "") -> PoolClosed:
        """The one place a ``PoolClosed`` is made; ``detail`` says when."""
        return PoolClosed(f"the pool{self.label} is closed{detail}")

    # -- closing -----------------------------------------------------------

    def begin_close(self) -> None:
        """Refuse new work, wake all waiters, retire idle entries."""
        self.closed = True
        self.coarse = math.inf
        self.waiters.fail_all(lambda: self.closed_error(" (it closed while this task waited)"))
        idle, self.idle = self.idle, deque()
        for entry in idle:
            self.discard(entry)
        self.on_change()

    def force_close(self) -> None:
        """Destroy every lent entry under its borrower (close timeout passed)."""
        for entry in list(self.entries.values()):
            # CLEANING: being validated or reset, by an acquirer or in the
            # background: neither may hold close() past its timeout.
            if entry.state in (LEASED, RETURNING, CLEANING):
                self.discard(entry)


def _nothing(*args: object) -> None:
    return None


def _no_clock() -> float:
    raise RuntimeError("the pool is not open")
