"""A model-based test of one ``AsyncPool``: random programs of borrowers, time and faults.

Hypothesis's ``RuleBasedStateMachine`` drives a single pool over the fake
connector with a random interleaving of what real programs do to a pool:
borrowers that acquire (``async with`` or ``await`` + ``release``, with
timeouts of 0, a little, or none), hold, release (normally, discarding, or
by raising out of the block) or are cancelled wherever they happen to be
waiting; the clock moving on past deadlines, validation windows, idle and
lifetime limits and health checks; resources dying behind the pool's back
(reported through ``Connector.watch`` or not); connects, validations and
resets failing, hanging or slowed down; and ``close()`` with or without a
timeout. After every step it checks the public contract
(``../shared/CONTRACT.md``) against a model of what the borrowers hold, and
at the end that every resource was closed exactly once.

Why this shape:

- The pool runs under trio with a ``MockClock`` that never moves by itself
  (no autojump), so time is one more input the state machine chooses. The
  pool's trio backend reads the run's clock, so pool deadlines, lifetimes,
  validation windows and health checks all follow it, and trio's scheduler is
  seeded by Hypothesis: an example replays exactly, which is what lets
  Hypothesis shrink a failure to a short program.
- Rules are synchronous, and a borrower must outlive the rule that started
  it, so each example owns one trio run in a background thread. Every rule
  sends its work in with ``trio.from_thread.run`` and then lets the run
  settle (``wait_all_tasks_blocked``): whatever can happen at this instant
  (connects, resets, validations, closes, hand-overs) has happened before
  anything is checked. Borrowers live in a nursery in that run; each has its
  own cancel scope, so a cancellation lands at whatever await it is blocked
  on: in the wait queue, in a validation, in its block, or in its release.
- What the model can state exactly, it does: between settles no task is
  mid-step, so ``stats().in_use`` must equal the number of borrowers that
  got a resource and have not finished giving it back. What the contract
  leaves open (a resource may die in its borrower's hands, or idle with
  nobody checking it), the model does not assert.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import pytest
import trio
import trio.testing
from hypothesis import Phase as HypothesisPhase
from hypothesis import seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from asyncpool import AsyncPool, PoolBusy, PoolClosed, PoolTimeout
from asyncpool._state import CLOSED

from .fakes import FakeConnector, FakeResource, check_invariants

T = TypeVar("T")

#: Set to an integer to explore examples other than the fixed, derandomized
#: ones, e.g. ``ASYNCPOOL_MODEL_SEED=7 pytest tests/test_model.py``.
_SEED = os.environ.get("ASYNCPOOL_MODEL_SEED") or None

#: Real seconds ``wait_all_tasks_blocked`` waits, once every task is blocked,
#: before it believes it, at the end of each rule: slack for wake-ups that
#: arrive from outside the run queue (none should: the pool and the fake use
#: no threads). Between the hops of one ``advance_time`` none is taken, as
#: each costs a real millisecond and a long advance hops hundreds of times.
SETTLE_CUSHION = 0.001

#: How many deadlines ``advance_time`` steps through one at a time before it
#: jumps the rest of the way in one go (a backstop against timers that re-arm
#: faster than the jump could end).
MAX_HOPS = 400

#: More concurrent borrowers than ``max_size`` (at most 3) so that some wait.
MAX_BORROWERS = 6

#: Every bounded clean-up in the pool (validation, background reset, close)
#: is cut off after this long; the deadline invariants below rely on it.
CLEANUP_TIMEOUT = 1.0


class Boom(Exception):
    """What a borrower's block raises when the model releases it "by error"."""


class Phase(enum.Enum):
    ACQUIRING = "acquiring"
    #: Acquire returned: the borrower holds its resource.
    HOLDING = "holding"
    #: Giving it back (``release()`` or leaving the ``async with``). The
    #: contract counts a resource the caller is still resetting as in use, so
    #: the borrower holds it until this returns, not until it starts.
    RELEASING = "releasing"
    DONE = "done"


Style = Literal["with", "await"]
How = Literal["normal", "discard", "raise"]


@dataclass(eq=False)
class Borrower:
    """One task that acquires a resource, holds it until told, and gives it back."""

    ident: int
    style: Style
    #: What ``acquire()`` was given, and the wait limit that results from it.
    timeout: float | None
    limit: float | None
    started_at: float
    closed_at_start: bool
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    release_now: trio.Event = field(default_factory=trio.Event)
    how: How = "normal"
    phase: Phase = Phase.ACQUIRING
    resource: FakeResource | None = None
    #: "released", "raised", "cancelled", or the pool error acquire raised.
    outcome: str | None = None
    cancelled_at: float | None = None
    #: Anything unexpected: an error nobody should see, or a failed check.
    error: BaseException | None = None

    def __repr__(self) -> str:
        return (
            f"<Borrower {self.ident} {self.style} timeout={self.timeout} {self.phase.value} "
            f"{self.resource!r} outcome={self.outcome}>"
        )


@dataclass(eq=False)
class Closer:
    """One task running ``pool.close(timeout)``."""

    timeout: float | None
    started_at: float
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done_at: float | None = None
    cancelled_at: float | None = None
    #: When the model first saw this close's timeout run out while it still
    #: waited for resources: from then on, lent resources are destroyed.
    forced_at: float | None = None
    error: BaseException | None = None


class ModelConnector(FakeConnector):
    """The fake connector, plus deaths the model can schedule and account for."""

    def __init__(self, *, seed: int, background_reset: bool) -> None:
        super().__init__(seed=seed)
        self.background_reset = background_reset
        #: Resources that must never be lent again: reported dead, or found
        #: dead by a validation that started after they died.
        self.doomed: set[int] = set()
        #: Resources that die the moment their next validation answers, and
        #: whether that death is reported.
        self.die_after_validation: dict[int, bool] = {}

    def kill(self, resource: FakeResource, report: bool) -> None:
        resource.dead = True

    async def validate(self, resource: FakeResource) -> bool:
        if resource.dead:
            # Started after the death, so it answers False (or fails): the
            # pool must retire the resource rather than lend it.
            self.doomed.add(resource.ident)
        ok = await super().validate(resource)
        report = self.die_after_validation.pop(resource.ident, None)
        if report is not None:
            # After the check answered, before the pool's task resumes.
            self.kill(resource, report)
        return ok


class WatchingModelConnector(ModelConnector):
    """Also reports deaths through ``Connector.watch``, as ``tests/test_deaths.py`` does."""

    def __init__(self, *, seed: int, background_reset: bool) -> None:
        super().__init__(seed=seed, background_reset=background_reset)
        self._dead: dict[int, Callable[[], None]] = {}

    def watch(self, resource: FakeResource, dead: Callable[[], None]) -> None:
        self._dead[resource.ident] = dead

    def kill(self, resource: FakeResource, report: bool) -> None:
        super().kill(resource, report)
        callback = self._dead.pop(resource.ident, None)
        if report and callback is not None:
            self.doomed.add(resource.ident)
            callback()


class TrioThread:
    """One trio run under a ``MockClock``, in a thread, that rules send work into."""

    def __init__(self) -> None:
        # No autojump: time moves only when a rule says so.
        self.clock = trio.testing.MockClock()
        self.nursery: trio.Nursery | None = None
        self.crashed: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pool-model-trio", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the trio run did not start")
        if self.crashed is not None:
            raise RuntimeError("the trio run did not start") from self.crashed

    def _run(self) -> None:
        try:
            trio.run(self._main, clock=self.clock)
        except BaseException as exc:
            self.crashed = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(afn, *args, trio_token=self._token)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def _begin_stop(self) -> None:
        # Let the clock run free: a borrower cancelled now may still be in a
        # shielded clean-up that only a deadline on this clock ends.
        self.clock.autojump_threshold = 0
        assert self._stop is not None
        self._stop.set()

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self.run_sync(self._begin_stop)
            except trio.RunFinishedError:
                pass
            self._thread.join(10)
        assert not self._thread.is_alive(), "the trio run did not end"
        if self.crashed is not None:
            raise AssertionError("the trio run crashed") from self.crashed


TIMEOUTS = st.sampled_from([None, 0.0, 0.5])
#: "nothing" three times over: half the time the connector works again.
FAILURE_MODES = [
    "nothing",
    "connect fails",
    "validate fails",
    "reset fails",
    "all fail",
    "connect hangs",
    "validate hangs",
    "reset hangs",
    "born dead",
    "nothing",
    "nothing",
]
#: How long connect, validate, reset and close take. A delay gives a
#: cancellation an await to land on; 1.5 s outlasts ``connect_timeout`` and
#: ``CLEANUP_TIMEOUT``, so the pool's own deadlines cut the call off (except
#: a reset in the releasing caller's own task, which the caller bounds).
LATENCIES: dict[str, tuple[float, float, float, float]] = {
    "instant": (0.0, 0.0, 0.0, 0.0),
    "slow connects": (0.2, 0.0, 0.0, 0.0),
    "slow checks": (0.0, 0.2, 0.0, 0.0),
    "slow resets": (0.0, 0.0, 0.2, 0.0),
    "slow closes": (0.0, 0.0, 0.0, 0.2),
    "all slow": (0.2, 0.2, 0.2, 0.2),
    "connects time out": (1.5, 0.0, 0.0, 0.0),
    "checks time out": (0.0, 1.5, 0.0, 0.0),
    "resets outlast cleanup": (0.0, 0.0, 1.5, 0.0),
}
#: Amounts that land before, on and past the pool's timers (validate_after
#: 0.5/2, max_idle 2, lifetimes 3/20, health checks 1/4, cleanup 1, ...).
ADVANCES = st.sampled_from([0.1, 0.5, 1.0, 2.0, 0.02, 5.0, 25.0])


def _explore(cls: type[T]) -> type[T]:
    """Apply ``ASYNCPOOL_MODEL_SEED``, if set, in place of the fixed examples."""
    if _SEED is None:
        return cls
    return seed(int(_SEED))(cls)


@_explore
@settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    # The same examples on every run, so a failure always reproduces; and
    # no example database written into the checkout.
    derandomize=_SEED is None,
    database=None,
    print_blob=True,
    # No "explain" stage: on a state machine it replays the shrunk example
    # for minutes and adds little to the printed steps.
    phases=[HypothesisPhase.explicit, HypothesisPhase.generate, HypothesisPhase.shrink],
)
class PoolModel(RuleBasedStateMachine):
    """The state machine: one pool, its borrowers, its clock and its connector."""

    def __init__(self) -> None:
        super().__init__()
        self.trio = TrioThread()
        self.pool: AsyncPool[FakeResource] | None = None
        self.connector: ModelConnector | None = None
        self.borrowers: list[Borrower] = []
        self.closers: list[Closer] = []
        #: A step failed: teardown only stops the run, it checks nothing more.
        self.broken = False

    # -- plumbing -------------------------------------------------------------

    def _in_trio(self, afn: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            self.trio.run(afn, *args)
        except BaseException:
            self.broken = True
            raise

    @property
    def _pool(self) -> AsyncPool[FakeResource]:
        assert self.pool is not None
        return self.pool

    @property
    def _connector(self) -> ModelConnector:
        assert self.connector is not None
        return self.connector

    async def _settle(self, cushion: float = SETTLE_CUSHION) -> None:
        """Let every task that can run at this instant run until all are blocked."""
        await trio.testing.wait_all_tasks_blocked(cushion)
        self._observe()

    def _observe(self) -> None:
        """Note the moments the model's later checks are measured from."""
        now = trio.current_time()
        for closer in self.closers:
            if (
                closer.timeout is not None
                and closer.forced_at is None
                and now >= closer.started_at + closer.timeout
                and (closer.cancelled_at is None or closer.cancelled_at >= closer.started_at + closer.timeout)
                and (closer.done_at is None or closer.done_at >= closer.started_at + closer.timeout)
            ):
                closer.forced_at = now

    async def _advance(self, seconds: float, hop: bool) -> None:
        """Move the clock ``seconds`` on.

        With ``hop``, one deadline at a time, settling (and checking) at each,
        as a quiet event loop would see them; without, in one jump, so that
        every timer due meanwhile fires at once, as on a stalled loop.
        """
        clock = self.trio.clock
        target = trio.current_time() + seconds
        if hop:
            for _ in range(MAX_HOPS):
                await self._settle(0.0)
                self._check()
                next_deadline = trio.current_time() + trio.lowlevel.current_statistics().seconds_to_next_deadline
                if next_deadline > target:
                    break
                clock.jump(max(next_deadline - trio.current_time(), 0.0))
                if trio.current_time() < next_deadline:  # float rounding
                    clock.jump(next_deadline - trio.current_time())
        rest = target - trio.current_time()
        if rest > 0:
            clock.jump(rest)
        await self._settle()

    def _forced(self) -> bool:
        """Has a ``close(timeout)`` destroyed what was lent?"""
        return any(closer.forced_at is not None for closer in self.closers)

    def _active(self) -> list[Borrower]:
        return [b for b in self.borrowers if b.phase is not Phase.DONE]

    def _holding(self) -> list[Borrower]:
        return [b for b in self.borrowers if b.phase is Phase.HOLDING and not b.release_now.is_set()]

    def _cancellable(self) -> list[Borrower | Closer]:
        targets: list[Borrower | Closer] = [b for b in self._active() if b.cancelled_at is None]
        targets += [c for c in self.closers if c.done_at is None and c.cancelled_at is None]
        return targets

    def _late_acquires(self) -> int:
        return sum(b.closed_at_start for b in self.borrowers)

    def _killable(self) -> list[FakeResource]:
        """Resources that may die: the idle ones first, warmest first (the
        next to be lent, so a death there is soon put to the test), then the
        rest (in borrowers' hands, being cleaned)."""
        if self.connector is None or self.pool is None:
            return []
        alive = [r for r in self.connector.created if r.close_count == 0 and not r.dead]
        idle = [entry.resource for entry in reversed(self.pool._state.idle) if entry.resource in alive]
        return idle + [r for r in alive if r not in idle]

    # -- the borrowers and closers ---------------------------------------------

    def _start_borrower(self, style: Style, timeout: float | None) -> Borrower:
        pool = self._pool
        limit = pool.config.timeout if timeout is None else timeout
        borrower = Borrower(
            ident=len(self.borrowers),
            style=style,
            timeout=timeout,
            limit=limit,
            started_at=trio.current_time(),
            closed_at_start=pool.closed,
        )
        self.borrowers.append(borrower)
        assert self.trio.nursery is not None
        self.trio.nursery.start_soon(self._borrow, borrower)
        return borrower

    async def _borrow(self, b: Borrower) -> None:
        pool = self._pool
        try:
            with b.scope:
                try:
                    if b.style == "with":
                        async with pool.acquire(timeout=b.timeout) as resource:
                            self._got(b, resource)
                            await b.release_now.wait()
                            b.phase = Phase.RELEASING
                            if b.how == "raise":
                                raise Boom
                            if b.how == "discard":
                                await pool.release(resource, discard=True)
                    else:
                        resource = await pool.acquire(timeout=b.timeout)
                        self._got(b, resource)
                        try:
                            await b.release_now.wait()
                        finally:
                            # As a careful caller does: give it back however
                            # we leave (also when cancelled). "raise" means
                            # the caller's code failed: it still releases.
                            b.phase = Phase.RELEASING
                            await pool.release(resource, discard=b.how == "discard")
                    b.outcome = "released"
                except (PoolTimeout, PoolBusy, PoolClosed) as exc:
                    if b.phase is not Phase.ACQUIRING:
                        raise
                    self._refused(b, exc)
                except Boom:
                    # Errors raised in the block pass through unchanged.
                    if b.how != "raise" or b.phase is not Phase.RELEASING:
                        raise
                    b.outcome = "raised"
            if b.scope.cancelled_caught:
                b.outcome = "cancelled"
        except trio.Cancelled:
            raise  # the run is being torn down
        except BaseException as exc:
            if b.error is None:  # keep the first thing that went wrong
                b.error = exc
        finally:
            b.phase = Phase.DONE

    def _got(self, b: Borrower, resource: FakeResource) -> None:
        """A borrower was lent ``resource``: it holds it now. What must be true
        of a resource at the moment it is lent is checked here; a violation is
        recorded rather than raised, so that the borrower carries on as a
        program would and the next check reports it as the one failure."""
        connector = self._connector
        b.resource = resource
        b.phase = Phase.HOLDING
        if b.closed_at_start:
            b.error = AssertionError(f"{b} was lent a resource by a pool closed before it asked")
        elif resource not in connector.created:
            b.error = AssertionError(f"{b} got {resource!r}, which the connector never made")
        elif resource.close_count:
            b.error = AssertionError(f"{b} was lent {resource!r}, which the pool had closed")
        elif resource.ident in connector.doomed:
            # Not "never lend a dead resource": one that died idle, with no
            # report and no validation due, may be lent. But never one the
            # pool was told is dead, or found dead.
            b.error = AssertionError(f"{b} was lent {resource!r}, which the pool knew was dead")

    def _refused(self, b: Borrower, exc: BaseException) -> None:
        """Checks on an acquire that raised one of the pool's errors."""
        b.outcome = type(exc).__name__
        now = trio.current_time()
        if isinstance(exc, PoolClosed):
            assert self._pool.closed, f"{b}: PoolClosed from an open pool"
        elif isinstance(exc, PoolBusy):
            assert self._pool.config.max_waiting is not None, f"{b}: PoolBusy without max_waiting"
        else:
            assert b.limit is not None, f"{b}: PoolTimeout although it may wait forever"
            assert now >= b.started_at + b.limit, f"{b}: PoolTimeout at {now}, before its deadline"
        if b.closed_at_start:
            assert isinstance(exc, PoolClosed), f"{b}: {exc!r} from a closed pool, not PoolClosed"

    def _start_closer(self, timeout: float | None) -> None:
        closer = Closer(timeout=timeout, started_at=trio.current_time())
        self.closers.append(closer)
        assert self.trio.nursery is not None
        self.trio.nursery.start_soon(self._close, closer)

    async def _close(self, closer: Closer) -> None:
        try:
            with closer.scope:
                await self._pool.close(timeout=closer.timeout)
        except trio.Cancelled:
            raise
        except BaseException as exc:
            closer.error = exc
        finally:
            closer.done_at = trio.current_time()

    # -- rules --------------------------------------------------------------------

    @initialize(
        max_size=st.integers(1, 3),
        min_size=st.integers(0, 3),
        timeout=st.sampled_from([None, 1.0, 4.0, 0.0]),
        max_waiting=st.sampled_from([None, 2, None, None, 0]),
        validate_after=st.sampled_from([None, 0.5, 2.0, 0.0]),
        max_idle=st.sampled_from([None, 2.0]),
        max_lifetime=st.sampled_from([None, 3.0, 20.0]),
        health_check_interval=st.sampled_from([None, 1.0, 4.0]),
        background_reset=st.booleans(),
        # Mostly with a connector that reports deaths: the report is a path
        # of its own through the pool (``PoolState.died``).
        watching=st.sampled_from([True, False, True]),
        open_at_once=st.booleans(),
        connector_seed=st.integers(0, 2**16),
    )
    def create_pool(
        self,
        max_size: int,
        min_size: int,
        timeout: float | None,
        max_waiting: int | None,
        validate_after: float | None,
        max_idle: float | None,
        max_lifetime: float | None,
        health_check_interval: float | None,
        background_reset: bool,
        watching: bool,
        open_at_once: bool,
        connector_seed: int,
    ) -> None:
        kind = WatchingModelConnector if watching else ModelConnector
        self.connector = kind(seed=connector_seed, background_reset=background_reset)
        self.pool = AsyncPool(
            self.connector,
            min_size=min(min_size, max_size),
            max_size=max_size,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            health_check_interval=health_check_interval,
            validate_after=validate_after,
            connect_timeout=1.0,
            cleanup_timeout=CLEANUP_TIMEOUT,
            reconnect_delay=0.1,
            reconnect_max_delay=1.0,
        )
        self._in_trio(self._create_pool, open_at_once)

    async def _create_pool(self, open_at_once: bool) -> None:
        if open_at_once:
            await self._pool.open()
        # Otherwise the first acquire opens it (or close() comes first).
        await self._settle()

    # After close(), a couple of acquires show that it turns them away; more
    # would only crowd out steps that explore something.
    @precondition(lambda self: len(self._active()) < MAX_BORROWERS and self._late_acquires() < 2)
    @rule(style=st.sampled_from(["with", "await"]), timeout=TIMEOUTS)
    def acquire(self, style: Style, timeout: float | None) -> None:
        """Start a borrower: it acquires, then holds until ``release`` or ``cancel``."""
        self._in_trio(self._acquire, style, timeout)

    async def _acquire(self, style: Style, timeout: float | None) -> None:
        self._start_borrower(style, timeout)
        await self._settle()

    @precondition(lambda self: bool(self._holding()))
    @rule(
        index=st.integers(0, MAX_BORROWERS - 1),
        how=st.sampled_from(["normal", "discard", "raise"]),
        then_cancel=st.sampled_from([False, False, True]),
    )
    def release(self, index: int, how: How, then_cancel: bool) -> None:
        """Tell a holding borrower to give its resource back; with
        ``then_cancel``, cancel it once the release is under way, so that the
        cancellation lands in the reset (or validation) it is waiting for."""
        self._in_trio(self._release, index, how, then_cancel)

    async def _release(self, index: int, how: How, then_cancel: bool) -> None:
        holding = self._holding()
        borrower = holding[index % len(holding)]
        borrower.how = how
        borrower.release_now.set()
        await self._settle()
        if then_cancel and borrower.phase is not Phase.DONE:
            borrower.cancelled_at = trio.current_time()
            borrower.scope.cancel()
            await self._settle()

    @precondition(lambda self: bool(self._cancellable()))
    @rule(index=st.integers(0, MAX_BORROWERS))
    def cancel(self, index: int) -> None:
        """Cancel a borrower (or a ``close()``) wherever it is blocked."""
        self._in_trio(self._cancel, index)

    async def _cancel(self, index: int) -> None:
        targets = self._cancellable()
        target = targets[index % len(targets)]
        target.cancelled_at = trio.current_time()
        target.scope.cancel()
        await self._settle()

    @rule(seconds=ADVANCES, hop=st.booleans())
    def advance_time(self, seconds: float, hop: bool) -> None:
        self._in_trio(self._advance, seconds, hop)

    @rule()
    def health_check_tick(self) -> None:
        """Just past the next health check, one deadline at a time."""
        interval = self._pool.config.health_check_interval
        self._in_trio(self._advance, (interval or 1.0) + 0.001, True)

    @precondition(lambda self: bool(self._killable()))
    @rule(
        index=st.integers(0, 7),
        report=st.sampled_from([True, False, True]),
        when=st.sampled_from(["now", "after_next_validation", "now"]),
    )
    def kill_resource(self, index: int, report: bool, when: str) -> None:
        """A resource dies behind the pool's back; reported through ``watch`` if ``report``."""
        self._in_trio(self._kill, index, report, when)

    async def _kill(self, index: int, report: bool, when: str) -> None:
        connector = self._connector
        candidates = self._killable()
        victim = candidates[index % len(candidates)]
        if when == "now":
            connector.kill(victim, report)
        else:
            connector.die_after_validation[victim.ident] = report
        await self._settle()

    @rule(
        mode=st.sampled_from(FAILURE_MODES),
        rate=st.sampled_from([1.0, 0.5]),
        latency=st.sampled_from(list(LATENCIES)),
    )
    def set_failures(self, mode: str, rate: float, latency: str) -> None:
        """What goes wrong in the connector from now on, how often (one mode
        at a time, so that most steps still let resources be lent), and how
        long its calls take (see ``LATENCIES``)."""
        self._in_trio(self._set_failures, mode, rate, latency)

    async def _set_failures(self, mode: str, rate: float, latency: str) -> None:
        connector = self._connector
        connector.connect_fail = rate if mode in ("connect fails", "all fail") else 0.0
        connector.validate_fail = rate if mode in ("validate fails", "all fail") else 0.0
        connector.reset_fail = rate if mode in ("reset fails", "all fail") else 0.0
        connector.connect_hang = rate if mode == "connect hangs" else 0.0
        connector.validate_hang = rate if mode == "validate hangs" else 0.0
        connector.reset_hang = rate if mode == "reset hangs" else 0.0
        connector.dead_on_arrival = rate if mode == "born dead" else 0.0
        (
            connector.connect_delay,
            connector.validate_delay,
            connector.reset_delay,
            connector.close_delay,
        ) = LATENCIES[latency]
        await self._settle()

    @rule(timeout=st.sampled_from([None, 0.0, 0.5]), dice=st.integers(0, 2))
    def close(self, timeout: float | None, dice: int) -> None:
        """Close the pool in a task of its own (it may wait for borrowers).

        Only when ``dice`` is 0: a closed pool has little left to explore, so
        closing is made rarer than the other rules (Hypothesis has no rule
        weights) while still possible at any step, and a shrunk example
        still needs no filler steps before it.
        """
        self._in_trio(self._close_rule, timeout, dice)

    async def _close_rule(self, timeout: float | None, dice: int) -> None:
        if dice == 0:
            self._start_closer(timeout)
        await self._settle()

    # -- invariants -------------------------------------------------------------

    @invariant()
    def contract_holds(self) -> None:
        if self.pool is None:
            return
        try:
            self.trio.run_sync(self._check)
        except BaseException:
            self.broken = True
            raise

    def _check(self) -> None:
        """Everything the contract promises at a quiet instant (run in the trio thread)."""
        pool = self._pool
        connector = self._connector
        now = trio.current_time()
        stats = pool.stats()

        failed = [(b, b.error) for b in self.borrowers if b.error is not None]
        assert not failed, f"borrowers saw something the contract rules out: {failed}"
        failed_closes = [c.error for c in self.closers if c.error is not None]
        assert not failed_closes, f"close() raised: {failed_closes}"

        # size == idle + in_use + connecting + cleaning, in_use + idle <= size <= max_size,
        # and the gauges agree with the pool's own records.
        check_invariants(pool)

        # in_use is exactly what callers hold. Once close(timeout) has run
        # out, what they still hold is destroyed under them and no longer counts.
        holders = [b for b in self.borrowers if b.phase in (Phase.HOLDING, Phase.RELEASING)]
        forced = self._forced()
        assert stats.in_use == (0 if forced else len(holders)), (stats, holders, forced)

        # Nobody holds what someone else holds, nor what the pool has closed
        # (unless close(timeout) forced it).
        held = [b.resource for b in holders]
        assert len({id(r) for r in held}) == len(held), f"a resource lent twice at once: {holders}"
        if not forced:
            closed_under = [b for b in holders if b.resource is not None and b.resource.close_count]
            assert not closed_under, f"closed while still lent: {closed_under}"

        acquiring = sum(b.phase is Phase.ACQUIRING for b in self.borrowers)
        assert 0 <= stats.waiting <= acquiring, (stats, acquiring)
        if pool.closed:
            assert stats.waiting == 0, f"tasks still waiting on a closed pool: {stats}"

        # Each resource is closed at most once, every close is counted, and
        # every resource not closed is one the pool still keeps: none leaked.
        twice = [r for r in connector.created if r.close_count > 1]
        assert not twice, f"closed more than once: {twice}"
        assert stats.created == len(connector.created), (stats, connector.created)
        assert stats.destroyed == sum(r.close_count for r in connector.created), (stats, connector.created)
        state = pool._state
        live = connector.live()
        assert len(live) == state.live, f"the connector has {live} open, the pool counts {state.live}"
        for resource in live:
            entry = state.entries.get(id(resource))
            assert entry is not None and entry.state != CLOSED, f"{resource!r} is open but lost to the pool"

        # The counters match what the borrowers saw.
        assert stats.acquired == sum(b.resource is not None for b in self.borrowers), (stats, self.borrowers)
        assert stats.timeouts == sum(b.outcome == "PoolTimeout" for b in self.borrowers), (stats, self.borrowers)
        assert stats.rejected == sum(b.outcome == "PoolBusy" for b in self.borrowers), (stats, self.borrowers)

        # Nothing outlives its deadline. An acquire with a limit gives up by
        # then (timeout=0 still validates a due idle resource, bounded by
        # cleanup_timeout); a cancelled task is let go at once, or after a
        # clean-up bounded by cleanup_timeout; a close(timeout) that ran out
        # finishes once the closes it started have (each bounded too).
        for b in self.borrowers:
            if b.phase is Phase.ACQUIRING and b.limit is not None:
                bound = b.started_at + (b.limit if b.limit > 0 else CLEANUP_TIMEOUT)
                assert now < bound, f"{b} still waits at {now}, past its deadline {bound}"
            if b.cancelled_at is not None and b.phase is not Phase.DONE:
                assert now < b.cancelled_at + CLEANUP_TIMEOUT, f"{b} cancelled at {b.cancelled_at}, still running"
        for closer in self.closers:
            if closer.done_at is None and closer.forced_at is not None and closer.cancelled_at is None:
                assert now < closer.forced_at + CLEANUP_TIMEOUT, f"close({closer.timeout}) still running at {now}"

    # -- the end ------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.pool is not None and not self.broken:
                self.trio.run(self._wind_down)
        finally:
            self.trio.stop()

    async def _wind_down(self) -> None:
        """Release everything, close the pool, and check that nothing is left."""
        pool = self._pool
        for b in self._holding():
            b.how = "normal"
            b.release_now.set()
        self._start_closer(None)
        await self._advance(2 * CLEANUP_TIMEOUT + 0.5, hop=True)
        # Whoever still runs is stuck in a reset that hangs in its own task:
        # a release in the caller's task is the caller's to bound (waiters
        # were all turned away by close()). A program would cancel them; so
        # does the model.
        for b in self._active():
            if b.cancelled_at is None:
                b.cancelled_at = trio.current_time()
                b.scope.cancel()
        for _ in range(10):
            if not self._active() and all(c.done_at is not None for c in self.closers):
                break
            await self._advance(CLEANUP_TIMEOUT, hop=True)
        self._check()
        assert not self._active(), f"borrowers never finished: {self._active()}"
        unfinished = [c for c in self.closers if c.done_at is None]
        assert not unfinished, f"close() never finished: {unfinished}"

        # A closed pool turns every acquire away, whichever way it is asked.
        late = [self._start_borrower("with", None), self._start_borrower("await", 0.0)]
        await self._settle()
        for b in late:
            assert b.outcome == "PoolClosed", b

        self._check()
        stats = pool.stats()
        assert pool.closed
        left = (stats.size, stats.idle, stats.in_use, stats.connecting, stats.cleaning, stats.waiting)
        assert left == (0, 0, 0, 0, 0, 0), f"a closed, drained pool still has resources: {stats}"
        self._connector.assert_all_closed_once()


# A passing run takes about ten seconds. A failing one is then shrunk to a
# short program, which can take minutes (Hypothesis stops shrinking after
# five); the default 60 s timeout would cut that short and lose the
# reproduction Hypothesis prints at the end, so this test gets longer.
@pytest.mark.timeout(330)
def test_pool_keeps_its_contract_under_random_programs() -> None:
    run_state_machine_as_test(PoolModel)
