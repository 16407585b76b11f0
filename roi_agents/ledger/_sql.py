"""The ledger's semantics, written once in SQL for SQLite and PostgreSQL.

Two tables. ``roi_budgets`` has one row per scope: its limits and period, and running counters of
what is held and what was committed in the current period by the scope and everything below it.
``roi_reservations`` has one row per hold: its amount, expiry and state, the budget rows it was
charged to, and, once committed, the actual spend. A reserve is therefore O(levels), whatever
the history: it locks the budget rows of the scope and of its ancestors (PostgreSQL:
``SELECT ... FOR UPDATE`` in scope order; SQLite: ``BEGIN IMMEDIATE``), checks each level's
limits against its counters, inserts the hold and adds it to the counters, all in one
transaction, so two workers can never both take the last of a budget. Commit and release lock
the same rows in the same order before they touch a hold, so no two transactions deadlock.

A hold past its TTL stops counting at once: readers subtract expired holds that are still in the
counters (an index on ``(state, expires_at)`` keeps that cheap), and the next reserve that holds
the locks of all the levels such a hold was charged to marks it ``expired`` and takes it out of
the counters. Times are the database's (seconds since the epoch), never the worker's clock.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from roi_agents.errors import (
    UnknownReservation,
    UnknownScope,
)
from roi_agents.ledger.base import (
    Amount,
    Balance,
    Reservation,
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

__all__ = ["Execute", "SQLLedger"]

Execute = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
"""Runs one statement (``%s`` placeholders) in the open transaction; returns its rows."""

_RESERVATION_COLUMNS = (
    "id, scope, idempotency_key, tokens, usd, tool_calls, state, created_at, expires_at, "
    "actual_tokens, actual_usd, actual_tool_calls, over_commit, charged"
)
_BUDGET_COLUMNS = (
    "scope, tokens, usd, tool_calls, period, period_start, held_tokens, held_usd, "
    "held_tool_calls, committed_tokens, committed_usd, committed_tool_calls, over_commits"
)


@dataclass(slots=True)
class _Level:
    """A budget row: the limits and the counters of one scope."""

    budget: ScopeBudget
    period_start: float
    held: Amount
    committed: Amount
    over_commits: int

    def current(self, start: float) -> tuple[Amount, int]:
        """Committed spend and over-commits of the period that starts at ``start``."""
        if self.period_start < start:
            return Amount(), 0
        return self.committed, self.over_commits


class SQLLedger(ABC):
    """A `Ledger` over a SQL database; subclasses supply connections and the dialect."""

    #: SQL expression: the database's current time in seconds since the epoch.
    now_sql: str
    #: SQL expressions: the start of the current day and month (UTC), in seconds.
    day_start_sql: str
    month_start_sql: str
    #: Table name prefix, e.g. a schema.
    prefix: str = ""
    #: Column type of scopes: compared bytewise, so a subtree is a range of keys.
    scope_type: str = "TEXT"
    #: Appended to a SELECT of one reservation that is about to change.
    row_lock_sql: str = ""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Execute]:
        """One transaction, committed on success and rolled back on error."""

    @abstractmethod
    def lock_budgets(self, execute: Execute, scopes: list[str]) -> None:
        """Serialise writers on these scopes' budget rows until the transaction ends."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def schema_statements(self) -> list[str]:
        """The DDL that creates the ledger's tables; safe to run again."""
        p, key = self.prefix, self.scope_type
        return [
            f"""CREATE TABLE IF NOT EXISTS {p}roi_budgets (
                scope {key} PRIMARY KEY,
                tokens BIGINT,
                usd DOUBLE PRECISION,
                tool_calls BIGINT,
                period TEXT CHECK (period IN ('daily', 'monthly')),
                period_start DOUBLE PRECISION NOT NULL DEFAULT 0,
                held_tokens BIGINT NOT NULL DEFAULT 0,
                held_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
                held_tool_calls BIGINT NOT NULL DEFAULT 0,
                committed_tokens BIGINT NOT NULL DEFAULT 0,
                committed_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
                committed_tool_calls BIGINT NOT NULL DEFAULT 0,
                over_commits BIGINT NOT NULL DEFAULT 0
            )""",
            f"""CREATE TABLE IF NOT EXISTS {p}roi_reservations (
                id TEXT PRIMARY KEY,
                scope {key} NOT NULL REFERENCES {p}roi_budgets (scope),
                charged TEXT NOT NULL,
                idempotency_key TEXT UNIQUE,
                tokens BIGINT NOT NULL,
                usd DOUBLE PRECISION NOT NULL,
                tool_calls BIGINT NOT NULL,
                state TEXT NOT NULL
                    CHECK (state IN ('held', 'committed', 'released', 'expired')),
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                committed_at DOUBLE PRECISION,
                actual_tokens BIGINT,
                actual_usd DOUBLE PRECISION,
                actual_tool_calls BIGINT,
                over_commit SMALLINT NOT NULL DEFAULT 0
            )""",
            f"""CREATE INDEX IF NOT EXISTS roi_reservations_expiry
                ON {p}roi_reservations (state, expires_at)""",
        ]

    def init_schema(self) -> None:
        """Create the tables if they do not exist (the migration); safe to run again.

        On tables of an earlier release it also rewrites the holds that kept their levels one
        per line as JSON arrays (both forms are read; the lines form only until this runs).
        """
        with self.transaction() as execute:
            for statement in self.schema_statements():
                execute(statement, ())
            old = execute(
                f"SELECT id, charged FROM {self.prefix}roi_reservations WHERE charged NOT LIKE %s",
                ("[%",),
            )
            for hold_id, charged in old:
                execute(
                    f"UPDATE {self.prefix}roi_reservations SET charged = %s WHERE id = %s",
                    (json.dumps(_levels_of(charged)), hold_id),
                )

    # -- budgets ----------------------------------------------------------------------------

    def set_budget(self, budget: ScopeBudget) -> None:
        """Create or change a scope's limits; its counters start from now when it is new.

        Raises:
            InvalidValueError: on a malformed scope.
        """
        check_scope(budget.scope)
        with self.transaction() as execute:
            _, day, month = self._clock(execute)
            execute(
                f"""INSERT INTO {self.prefix}roi_budgets
                (scope, tokens, usd, tool_calls, period, period_start)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (scope) DO UPDATE SET tokens = excluded.tokens,
                    usd = excluded.usd, tool_calls = excluded.tool_calls,
                    period = excluded.period""",
                (
                    budget.scope,
                    budget.tokens,
                    budget.usd,
                    budget.tool_calls,
                    budget.period,
                    period_start(budget, day, month),
                ),
            )

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
        with self.transaction() as execute:
            # Looked up under the scope's locks: a concurrent reserve with the same key (hence
            # the same scope) waits for this one and then finds its hold.
            self.lock_budgets(execute, levels)
            if key is not None:
                rows = execute(
                    f"SELECT {_RESERVATION_COLUMNS} FROM {self.prefix}roi_reservations "
                    "WHERE idempotency_key = %s",
                    (key,),
                )
                if rows:
                    return _reservation(rows[0], self._clock(execute)[0])
            found = self._levels(execute, levels)
            if scope not in found:
                raise UnknownScope(scope)
            now, day, month = self._clock(execute)
            expired = self._expired(execute, levels[0], now)
            check_fits(
                (
                    (level, row.budget, self._used(level, row, expired, day, month))
                    for level, row in found.items()
                ),
                amount,
            )
            # Expired holds charged only to rows this transaction has locked leave the counters;
            # the others (in scopes this reserve does not lock) are left to `sweep`, after.
            leftover = 0
            for hold_id, hold_amount, charged in expired:
                leftover += not set(charged) <= found.keys()
                if set(charged) <= found.keys():
                    execute(
                        f"UPDATE {self.prefix}roi_reservations SET state = 'expired' WHERE id = %s",
                        (hold_id,),
                    )
                    self._add(execute, charged, held=_negative(hold_amount))
            charged = list(found)
            self._roll_periods(execute, found, day, month)
            reservation_id = uuid.uuid4().hex
            execute(
                f"""INSERT INTO {self.prefix}roi_reservations
                (id, scope, charged, idempotency_key, tokens, usd, tool_calls, state, created_at,
                 expires_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s, 'held', %s, %s)""",
                (
                    reservation_id,
                    scope,
                    json.dumps(charged),
                    key,
                    amount.tokens,
                    amount.usd,
                    amount.tool_calls,
                    now,
                    now + ttl,
                ),
            )
            self._add(execute, charged, held=amount)
        if leftover:  # each expired hold is read once more, then never again
            self.sweep()
        return Reservation(
            id=reservation_id,
            scope=scope,
            amount=amount,
            state="held",
            created_at=now,
            expires_at=now + ttl,
            idempotency_key=idempotency_key,
        )

    def commit(self, reservation: Reservation | str, actual: Amount) -> Reservation:
        """Record the real spend against a hold; what it did not use is free again.

        More than was reserved is recorded as is and flagged (``over_commit``). So is a commit
        that arrives after the hold's TTL ran out (the hold no longer counted, but the spend
        happened: it is recorded, never dropped). Committing again with the same numbers
        returns the committed reservation and changes nothing.

        Raises:
            ReservationConflict: the hold was released, or committed with other numbers.
            UnknownReservation: no such reservation.
        """
        actual = Amount.model_validate(actual)
        with self.transaction() as execute:
            current, stored, charged, now, day, month = self._locked(execute, _id(reservation))
            if is_replayed_commit(current, actual):
                return current
            over = is_over_commit(current, actual)
            execute(
                f"""UPDATE {self.prefix}roi_reservations SET state = 'committed',
                committed_at = %s, actual_tokens = %s, actual_usd = %s, actual_tool_calls = %s,
                over_commit = %s WHERE id = %s""",
                (now, actual.tokens, actual.usd, actual.tool_calls, int(over), current.id),
            )
            self._roll_periods(execute, self._levels(execute, charged), day, month)
            self._add(
                execute,
                charged,
                # A hold swept as expired has already left the counters.
                held=_negative(current.amount) if stored == "held" else (0, 0, 0),
                committed=actual,
                over_commits=int(over),
            )
        if over:
            log_over_commit(current, actual)
        return current.model_copy(
            update={"state": "committed", "actual": actual, "over_commit": over}
        )

    def release(self, reservation: Reservation | str) -> Reservation:
        """Free a hold. Releasing a committed or released reservation changes nothing.

        Raises:
            UnknownReservation: no such reservation.
        """
        with self.transaction() as execute:
            current, stored, charged, *_ = self._locked(execute, _id(reservation))
            if current.state not in ("held", "expired"):
                return current
            execute(
                f"UPDATE {self.prefix}roi_reservations SET state = 'released' WHERE id = %s",
                (current.id,),
            )
            if stored == "held":  # still in the counters
                self._add(execute, charged, held=_negative(current.amount))
        return current.model_copy(update={"state": "released"})

    def extend(self, reservation: Reservation | str, *, ttl: float) -> Reservation:
        """Keep a hold ``ttl`` more seconds from now (a call still running near its TTL).

        Raises:
            ReservationConflict: the hold was committed, released or has expired.
            UnknownReservation: no such reservation.
            InvalidValueError: on a malformed TTL.
        """
        ttl = check_ttl(ttl)
        with self.transaction() as execute:
            current, _, _, now, _, _ = self._locked(execute, _id(reservation))
            check_extendable(current)
            execute(
                f"UPDATE {self.prefix}roi_reservations SET expires_at = %s WHERE id = %s",
                (now + ttl, current.id),
            )
        return current.model_copy(update={"expires_at": now + ttl})

    def sweep(self, limit: int = 10_000) -> int:
        """Take up to ``limit`` holds past their TTL out of the counters; how many it took.

        A reserve sweeps the expired holds charged only to the levels it locks, and calls this
        when it saw others (holds in scopes never used again), so that a reserve's work stays
        bounded by its levels whatever the history. Safe beside a late commit of the same hold.
        """
        with self.transaction() as execute:
            now = self._clock(execute)[0]
            rows = execute(
                f"""SELECT id, charged FROM {self.prefix}roi_reservations
                WHERE state = 'held' AND expires_at <= %s ORDER BY expires_at LIMIT %s""",
                (now, limit),
            )
            if not rows:
                return 0
            levels = {level for _, charged in rows for level in _levels_of(charged)}
            self.lock_budgets(execute, sorted(levels))
            # Under the locks, one statement: holds committed or released meanwhile are left.
            swept = execute(
                f"""UPDATE {self.prefix}roi_reservations SET state = 'expired'
                WHERE id IN ({", ".join(["%s"] * len(rows))}) AND state = 'held'
                RETURNING tokens, usd, tool_calls, charged""",
                [hold_id for hold_id, _ in rows],
            )
            freed: dict[str, Amount] = {}
            for tokens, usd, calls, charged in swept:
                amount = Amount(tokens=int(tokens), usd=float(usd), tool_calls=int(calls))
                for level in _levels_of(charged):
                    freed[level] = freed.get(level, Amount()) + amount
            for level, amount in sorted(freed.items()):
                self._add(execute, [level], held=_negative(amount))
        return len(swept)

    def get(self, reservation_id: str) -> Reservation:
        """A reservation as the ledger sees it now.

        Raises:
            UnknownReservation: no such reservation.
        """
        with self.transaction() as execute:
            rows = execute(
                f"SELECT {_RESERVATION_COLUMNS} FROM {self.prefix}roi_reservations WHERE id = %s",
                (reservation_id,),
            )
            if not rows:
                raise UnknownReservation(reservation_id)
            return _reservation(rows[0], self._clock(execute)[0])

    def balance(self, scope: str) -> Balance:
        """Where ``scope`` stands now.

        Raises:
            UnknownScope: when the scope has no budget.
        """
        levels = ancestors(scope)
        with self.transaction() as execute:
            found = self._levels(execute, levels)
            if scope not in found:
                raise UnknownScope(scope)
            now, day, month = self._clock(execute)
            expired = self._expired(execute, levels[0], now)
        left = remaining(
            (row.budget, self._used(level, row, expired, day, month))
            for level, row in found.items()
        )
        own = found[scope]
        committed, over_commits = own.current(period_start(own.budget, day, month))
        return Balance(
            scope=scope,
            budget=own.budget,
            reserved=_minus(own.held, _charged_to(scope, expired)),
            committed=committed,
            remaining=left,
            over_committed=over_commits > 0,
        )

    # -- async: the same calls on a worker thread -------------------------------------------

    async def areserve(
        self, scope: str, amount: Amount, *, ttl: float, idempotency_key: str | None = None
    ) -> Reservation:
        """Async `reserve` (runs the transaction on a worker thread)."""
        return await asyncio.to_thread(
            self.reserve, scope, amount, ttl=ttl, idempotency_key=idempotency_key
        )

    async def acommit(self, reservation: Reservation | str, actual: Amount) -> Reservation:
        """Async `commit`."""
        return await asyncio.to_thread(self.commit, reservation, actual)

    async def arelease(self, reservation: Reservation | str) -> Reservation:
        """Async `release`."""
        return await asyncio.to_thread(self.release, reservation)

    async def abalance(self, scope: str) -> Balance:
        """Async `balance`."""
        return await asyncio.to_thread(self.balance, scope)

    async def aextend(self, reservation: Reservation | str, *, ttl: float) -> Reservation:
        """Async `extend`."""
        return await asyncio.to_thread(self.extend, reservation, ttl=ttl)

    # -- helpers ----------------------------------------------------------------------------

    def _clock(self, execute: Execute) -> tuple[float, float, float]:
        (row,) = execute(f"SELECT {self.now_sql}, {self.day_start_sql}, {self.month_start_sql}", ())
        return float(row[0]), float(row[1]), float(row[2])

    def _levels(self, execute: Execute, scopes: list[str]) -> dict[str, _Level]:
        """The budget rows among ``scopes``, widest first."""
        marks = ", ".join(["%s"] * len(scopes))
        rows = execute(
            f"SELECT {_BUDGET_COLUMNS} FROM {self.prefix}roi_budgets WHERE scope IN ({marks})",
            scopes,
        )
        found = {}
        for row in rows:
            scope, tokens, usd, calls, period, start, ht, hu, hc, ct, cu, cc, over = row
            found[scope] = _Level(
                budget=ScopeBudget(
                    scope=scope, tokens=tokens, usd=usd, tool_calls=calls, period=period
                ),
                period_start=float(start),
                held=Amount(tokens=int(ht), usd=max(float(hu), 0.0), tool_calls=int(hc)),
                committed=Amount(tokens=int(ct), usd=max(float(cu), 0.0), tool_calls=int(cc)),
                over_commits=int(over),
            )
        return {s: found[s] for s in scopes if s in found}

    @staticmethod
    def _used(
        level: str,
        row: _Level,
        expired: list[tuple[str, Amount, list[str]]],
        day: float,
        month: float,
    ) -> Amount:
        """What a level has used: its live holds and its current period's commits."""
        held = _minus(row.held, _charged_to(level, expired))
        return held + row.current(period_start(row.budget, day, month))[0]

    def _expired(
        self, execute: Execute, top: str, now: float
    ) -> list[tuple[str, Amount, list[str]]]:
        """Holds past their TTL that still count in the counters, in ``top``'s subtree."""
        rows = execute(
            f"""SELECT id, tokens, usd, tool_calls, charged FROM {self.prefix}roi_reservations
            WHERE state = 'held' AND expires_at <= %s
                AND (scope = %s OR (scope >= %s AND scope < %s))""",
            (now, top, top + "/", top + "0"),  # "0" sorts right after "/"
        )
        return [
            (
                row[0],
                Amount(tokens=int(row[1]), usd=float(row[2]), tool_calls=int(row[3])),
                _levels_of(row[4]),
            )
            for row in rows
        ]

    def _add(
        self,
        execute: Execute,
        scopes: list[str],
        *,
        held: Amount | tuple[float, float, float] = (0, 0, 0),
        committed: Amount | None = None,
        over_commits: int = 0,
    ) -> None:
        """Add to the counters of ``scopes`` (``held`` may be negative, as a tuple)."""
        h = (held.tokens, held.usd, held.tool_calls) if isinstance(held, Amount) else held
        c = committed or Amount()
        marks = ", ".join(["%s"] * len(scopes))
        execute(
            f"""UPDATE {self.prefix}roi_budgets SET
                held_tokens = held_tokens + %s, held_usd = held_usd + %s,
                held_tool_calls = held_tool_calls + %s,
                committed_tokens = committed_tokens + %s, committed_usd = committed_usd + %s,
                committed_tool_calls = committed_tool_calls + %s,
                over_commits = over_commits + %s
            WHERE scope IN ({marks})""",
            (*h, c.tokens, c.usd, c.tool_calls, over_commits, *scopes),
        )

    def _roll_periods(
        self, execute: Execute, found: dict[str, _Level], day: float, month: float
    ) -> None:
        """Start a new period's committed counters on rows whose period has ended."""
        for scope, row in found.items():
            start = period_start(row.budget, day, month)
            if row.period_start < start:
                execute(
                    f"""UPDATE {self.prefix}roi_budgets SET period_start = %s,
                    committed_tokens = 0, committed_usd = 0, committed_tool_calls = 0,
                    over_commits = 0 WHERE scope = %s""",
                    (start, scope),
                )

    def _locked(
        self, execute: Execute, reservation_id: str
    ) -> tuple[Reservation, str, list[str], float, float, float]:
        """A reservation about to change, its state as stored, and the database's clock.

        The budget rows it was charged to are locked first, the order every writer uses. The
        stored state is ``held`` for a hold past its TTL that no reserve has swept yet (it still
        counts in the counters), where the reservation says ``expired``.
        """
        rows = execute(
            f"SELECT charged FROM {self.prefix}roi_reservations WHERE id = %s", (reservation_id,)
        )
        if not rows:
            raise UnknownReservation(reservation_id)
        charged = _levels_of(rows[0][0])
        self.lock_budgets(execute, charged)
        (row,) = execute(
            f"SELECT {_RESERVATION_COLUMNS} FROM {self.prefix}roi_reservations WHERE id = %s"
            + self.row_lock_sql,
            (reservation_id,),
        )
        now, day, month = self._clock(execute)
        return _reservation(row, now), str(row[6]), charged, now, day, month


def _levels_of(charged: Any) -> list[str]:
    """The levels a hold was charged to, as stored: a JSON array (one per line before)."""
    text = str(charged)
    return list(json.loads(text)) if text.startswith("[") else text.split("\n")


def _id(reservation: Reservation | str) -> str:
    return reservation if isinstance(reservation, str) else reservation.id


def _charged_to(level: str, holds: list[tuple[str, Amount, list[str]]]) -> Amount:
    total = Amount()
    for _, amount, charged in holds:
        if level in charged:
            total = total + amount
    return total


def _minus(a: Amount, b: Amount) -> Amount:
    return Amount(
        tokens=max(a.tokens - b.tokens, 0),
        usd=max(a.usd - b.usd, 0.0),
        tool_calls=max(a.tool_calls - b.tool_calls, 0),
    )


def _negative(amount: Amount) -> tuple[float, float, float]:
    return (-amount.tokens, -amount.usd, -amount.tool_calls)


def _reservation(row: tuple[Any, ...], now: float) -> Reservation:
    (rid, scope, key, tokens, usd, calls, state, created, expires, at, au, ac, over, _) = row
    if key is not None:
        key = str(key).split("\n", 1)[-1]  # stored per scope (see stored_key)
    if state == "held" and float(expires) <= now:
        state = "expired"
    actual = Amount(tokens=int(at), usd=float(au), tool_calls=int(ac)) if at is not None else None
    return Reservation(
        id=rid,
        scope=scope,
        amount=Amount(tokens=int(tokens), usd=float(usd), tool_calls=int(calls)),
        state=state,
        created_at=float(created),
        expires_at=float(expires),
        idempotency_key=key,
        actual=actual,
        over_commit=bool(over),
    )


def iter_rows(cursor: Any) -> Iterator[tuple[Any, ...]]:
    """Rows of a DB-API cursor, or none for a statement without results."""
    if cursor.description is None:
        return iter(())
    return iter(cursor.fetchall())
