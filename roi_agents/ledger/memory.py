"""A ledger in process memory: the same semantics as the SQL ledgers, in plain Python.

The default of every session and integration that is given no ledger, so it is on the path of
every call: a reserve, a commit and a balance take microseconds here, against tens of
microseconds each for SQLite's transactions. One lock serialises the writers of a process (its
threads and asyncio tasks). Holds past their TTL leave the counters when any call next looks
(a heap orders them by expiry), so nothing grows with abandoned holds. Times are this process's
clock (``time.time``, or the ``clock`` given).

The SQL ledgers are the reference: `tests/integration/test_ledger_agreement.py` plays the
same random sequences of calls against this ledger and each SQL one, and compares every answer.
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from roi_agents.errors import (
    UnknownReservation,
    UnknownScope,
)
from roi_agents.ledger.base import (
    Amount,
    Balance,
    Reservation,
    ReservationState,
    ScopeBudget,
    ancestors,
    check_scope,
    check_ttl,
)
from roi_agents.ledger.rules import (
    check_extendable,
    check_fits,
    is_over_commit,
    is_replayed_commit,
    log_over_commit,
    period_start,
    remaining,
    stored_key,
)

__all__ = ["MemoryLedger"]

_Counts = list[float]
"""Tokens, USD, tool calls: a level's counter, changed in place."""


def _counts(amount: Amount) -> _Counts:
    return [amount.tokens, amount.usd, amount.tool_calls]


def _amount(counts: _Counts) -> Amount:
    tokens, usd, calls = counts
    return Amount(tokens=max(int(tokens), 0), usd=max(usd, 0.0), tool_calls=max(int(calls), 0))


def _add(into: _Counts, counts: _Counts, sign: int = 1) -> None:
    for k in range(3):
        into[k] += sign * counts[k]


@dataclass(slots=True)
class _Level:
    budget: ScopeBudget
    period_start: float
    held: _Counts = field(default_factory=lambda: [0, 0.0, 0])
    committed: _Counts = field(default_factory=lambda: [0, 0.0, 0])
    over_commits: int = 0


@dataclass(slots=True)
class _Hold:
    reservation: Reservation
    charged: list[str]
    counted: bool = True  # still in its levels' held counters


class MemoryLedger:
    """A ledger in process memory, for one process (its threads and tasks) and for tests.

    Args:
        clock: seconds since the epoch (default ``time.time``); periods start at the UTC day or
            month this clock is in.

    Example:
        >>> ledger = MemoryLedger()
        >>> ledger.set_budget(ScopeBudget(scope="acme", tokens=1000))
        >>> hold = ledger.reserve("acme", Amount(tokens=400), ttl=60)
        >>> ledger.balance("acme").remaining["tokens"]
        600.0
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._levels: dict[str, _Level] = {}
        self._holds: dict[str, _Hold] = {}
        self._keys: dict[str, str] = {}
        self._expiry: list[tuple[float, str]] = []

    def init_schema(self) -> None:
        """Nothing to create."""

    def close(self) -> None:
        """Nothing to release."""

    # -- budgets ----------------------------------------------------------------------------

    def set_budget(self, budget: ScopeBudget) -> None:
        """Create or change a scope's limits; its counters start from now when it is new.

        Raises:
            InvalidValueError: on a malformed scope.
        """
        check_scope(budget.scope)
        budget = ScopeBudget.model_validate(budget)
        with self._lock:
            level = self._levels.get(budget.scope)
            if level is None:
                start = period_start(budget, *self._starts(self.clock()))
                self._levels[budget.scope] = _Level(budget=budget, period_start=start)
            else:
                level.budget = budget

    # -- reservations -----------------------------------------------------------------------

    def reserve(
        self, scope: str, amount: Amount, *, ttl: float, idempotency_key: str | None = None
    ) -> Reservation:
        """Hold ``amount`` in ``scope`` (and every ancestor with a budget) for ``ttl`` seconds.

        Raises:
            BudgetExceeded: when it does not fit in some level; names the level and resource.
            UnknownScope: when the scope has no budget.
            InvalidValueError: on a malformed scope, amount or TTL.
        """
        levels = ancestors(scope)
        amount = Amount.model_validate(amount)
        ttl = check_ttl(ttl)
        key = stored_key(scope, idempotency_key)
        with self._lock:
            now = self.clock()
            self._expire(now)
            if key is not None and key in self._keys:
                return self._view(self._holds[self._keys[key]], now)
            found = self._found(levels, scope)
            day, month = self._starts(now)
            check_fits(
                (
                    (name, level.budget, self._used(level, day, month))
                    for name, level in found.items()
                ),
                amount,
            )
            self._roll(found.values(), day, month)
            reservation = Reservation(
                id=uuid.uuid4().hex,
                scope=scope,
                amount=amount,
                state="held",
                created_at=now,
                expires_at=now + ttl,
                idempotency_key=idempotency_key,
            )
            self._holds[reservation.id] = _Hold(reservation, list(found))
            if key is not None:
                self._keys[key] = reservation.id
            heapq.heappush(self._expiry, (reservation.expires_at, reservation.id))
            for level in found.values():
                _add(level.held, _counts(amount))
        return reservation

    def commit(self, reservation: Reservation | str, actual: Amount) -> Reservation:
        """Record the real spend against a hold; what it did not use is free again.

        As the SQL ledgers: more than was reserved, or a commit after the hold's TTL ran out,
        is recorded as is and flagged (``over_commit``), never dropped; committing again with
        the same numbers changes nothing.

        Raises:
            ReservationConflict: the hold was released, or committed with other numbers.
            UnknownReservation: no such reservation.
        """
        actual = Amount.model_validate(actual)
        with self._lock:
            now = self.clock()
            self._expire(now)
            hold = self._hold(reservation)
            current = hold.reservation
            if is_replayed_commit(current, actual):
                return current
            over = is_over_commit(current, actual)
            levels = [self._levels[name] for name in hold.charged]
            self._roll(levels, *self._starts(now))
            for level in levels:
                if hold.counted:
                    _add(level.held, _counts(current.amount), -1)
                _add(level.committed, _counts(actual))
                level.over_commits += over
            hold.counted = False
            hold.reservation = current.model_copy(
                update={"state": "committed", "actual": actual, "over_commit": over}
            )
        if over:
            log_over_commit(current, actual)
        return hold.reservation

    def release(self, reservation: Reservation | str) -> Reservation:
        """Free a hold. Releasing a committed or released reservation changes nothing.

        Raises:
            UnknownReservation: no such reservation.
        """
        with self._lock:
            self._expire(self.clock())
            hold = self._hold(reservation)
            if hold.reservation.state not in ("held", "expired"):
                return hold.reservation
            self._uncount(hold)
            hold.reservation = hold.reservation.model_copy(update={"state": "released"})
            return hold.reservation

    def extend(self, reservation: Reservation | str, *, ttl: float) -> Reservation:
        """Keep a hold ``ttl`` more seconds from now (a call still running near its TTL).

        Raises:
            ReservationConflict: the hold was committed, released or has expired.
            UnknownReservation: no such reservation.
            InvalidValueError: on a malformed TTL.
        """
        ttl = check_ttl(ttl)
        with self._lock:
            now = self.clock()
            self._expire(now)
            hold = self._hold(reservation)
            check_extendable(hold.reservation)
            hold.reservation = hold.reservation.model_copy(update={"expires_at": now + ttl})
            heapq.heappush(self._expiry, (now + ttl, hold.reservation.id))
            return hold.reservation

    def sweep(self, limit: int = 10_000) -> int:
        """Take up to ``limit`` holds past their TTL out of the counters; how many it took.

        Every call already does this for all of them; kept for the `Ledger` API.
        """
        with self._lock:
            return self._expire(self.clock(), limit)

    def get(self, reservation_id: str) -> Reservation:
        """A reservation as the ledger sees it now.

        Raises:
            UnknownReservation: no such reservation.
        """
        with self._lock:
            now = self.clock()
            return self._view(self._hold(reservation_id), now)

    def balance(self, scope: str) -> Balance:
        """Where ``scope`` stands now.

        Raises:
            UnknownScope: when the scope has no budget.
        """
        levels = ancestors(scope)
        with self._lock:
            now = self.clock()
            self._expire(now)
            found = self._found(levels, scope)
            day, month = self._starts(now)
            left = remaining(
                (level.budget, self._used(level, day, month)) for level in found.values()
            )
            own = found[scope]
            committed, over_commits = self._current(own, day, month)
            return Balance(
                scope=scope,
                budget=own.budget,
                reserved=_amount(own.held),
                committed=committed,
                remaining=left,
                over_committed=over_commits > 0,
            )

    # -- async: no I/O to wait for, so the twins run inline ----------------------------------

    async def areserve(
        self, scope: str, amount: Amount, *, ttl: float, idempotency_key: str | None = None
    ) -> Reservation:
        """Async `reserve` (inline)."""
        return self.reserve(scope, amount, ttl=ttl, idempotency_key=idempotency_key)

    async def acommit(self, reservation: Reservation | str, actual: Amount) -> Reservation:
        """Async `commit` (inline)."""
        return self.commit(reservation, actual)

    async def arelease(self, reservation: Reservation | str) -> Reservation:
        """Async `release` (inline)."""
        return self.release(reservation)

    async def abalance(self, scope: str) -> Balance:
        """Async `balance` (inline)."""
        return self.balance(scope)

    async def aextend(self, reservation: Reservation | str, *, ttl: float) -> Reservation:
        """Async `extend` (inline)."""
        return self.extend(reservation, ttl=ttl)

    # -- helpers (called with the lock held) --------------------------------------------------

    @staticmethod
    def _starts(now: float) -> tuple[float, float]:
        """The start of the UTC day and month ``now`` is in, in seconds since the epoch."""
        at = datetime.fromtimestamp(now, UTC)
        day = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return day.timestamp(), day.replace(day=1).timestamp()

    @staticmethod
    def _current(level: _Level, day: float, month: float) -> tuple[Amount, int]:
        """Committed spend and over-commits of the level's current period."""
        if level.period_start < period_start(level.budget, day, month):
            return Amount(), 0
        return _amount(level.committed), level.over_commits

    @classmethod
    def _used(cls, level: _Level, day: float, month: float) -> Amount:
        """What a level has used: its live holds and its current period's commits."""
        return _amount(level.held) + cls._current(level, day, month)[0]

    @staticmethod
    def _roll(levels: Iterable[_Level], day: float, month: float) -> None:
        """Start a new period's committed counters on levels whose period has ended."""
        for level in levels:
            start = period_start(level.budget, day, month)
            if level.period_start < start:
                level.period_start = start
                level.committed = [0, 0.0, 0]
                level.over_commits = 0

    def _found(self, levels: list[str], scope: str) -> dict[str, _Level]:
        """The levels among ``levels`` that have a budget, widest first."""
        found = {name: self._levels[name] for name in levels if name in self._levels}
        if scope not in found:
            raise UnknownScope(scope)
        return found

    def _hold(self, reservation: Reservation | str) -> _Hold:
        reservation_id = reservation if isinstance(reservation, str) else reservation.id
        hold = self._holds.get(reservation_id)
        if hold is None:
            raise UnknownReservation(reservation_id)
        return hold

    def _view(self, hold: _Hold, now: float) -> Reservation:
        """The reservation as of ``now``: a hold past its TTL reads ``expired``."""
        reservation = hold.reservation
        if reservation.state == "held" and reservation.expires_at <= now:
            state: ReservationState = "expired"
            return reservation.model_copy(update={"state": state})
        return reservation

    def _uncount(self, hold: _Hold) -> None:
        if hold.counted:
            for name in hold.charged:
                _add(self._levels[name].held, _counts(hold.reservation.amount), -1)
            hold.counted = False

    def _expire(self, now: float, limit: int | None = None) -> int:
        """Take holds past their TTL out of the counters (at most ``limit``); how many."""
        taken = 0
        while self._expiry and self._expiry[0][0] <= now and (limit is None or taken < limit):
            _, reservation_id = heapq.heappop(self._expiry)
            hold = self._holds[reservation_id]
            if hold.reservation.state != "held" or hold.reservation.expires_at > now:
                continue  # committed or released before it expired, or extended
            self._uncount(hold)
            hold.reservation = hold.reservation.model_copy(update={"state": "expired"})
            taken += 1
        return taken
