"""The ledger's semantics, written once in SQL for SQLite and PostgreSQL.

Two tables: ``roi_budgets`` (one row per scope: limits and period) and ``roi_reservations`` (one
row per hold, with its state, expiry and, once committed, the actual spend). What a scope has
used is an aggregate over its subtree: active holds plus this period's commits. Every reserve
runs in one transaction that first locks the budget rows of the scope and its ancestors
(PostgreSQL: ``SELECT ... FOR UPDATE`` in scope order; SQLite: ``BEGIN IMMEDIATE``), so two
workers can never both take the last of a budget. Times are the database's (seconds since the
epoch), never the worker's clock.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from roi_agents.errors import (
    BudgetExceeded,
    ReservationConflict,
    ReservationExpired,
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
from roi_agents.types import RESOURCES, Resource

__all__ = ["Execute", "SQLLedger"]

logger = logging.getLogger("roi_agents.ledger")

Execute = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
"""Runs one statement (``%s`` placeholders) in the open transaction; returns its rows."""

_RESERVATION_COLUMNS = (
    "id, scope, idempotency_key, tokens, usd, tool_calls, state, created_at, expires_at, "
    "actual_tokens, actual_usd, actual_tool_calls, over_commit"
)


class SQLLedger(ABC):
    """A `Ledger` over a SQL database; subclasses supply connections and the dialect."""

    #: SQL expression: the database's current time in seconds since the epoch.
    now_sql: str
    #: SQL expressions: the start of the current day and month (UTC), in seconds.
    day_start_sql: str
    month_start_sql: str
    #: Table name prefix, e.g. a schema.
    prefix: str = ""

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
        p = self.prefix
        return [
            f"""CREATE TABLE IF NOT EXISTS {p}roi_budgets (
                scope TEXT PRIMARY KEY,
                tokens BIGINT,
                usd DOUBLE PRECISION,
                tool_calls BIGINT,
                period TEXT CHECK (period IN ('daily', 'monthly'))
            )""",
            f"""CREATE TABLE IF NOT EXISTS {p}roi_reservations (
                id TEXT PRIMARY KEY,
                scope TEXT NOT NULL REFERENCES {p}roi_budgets (scope),
                idempotency_key TEXT UNIQUE,
                tokens BIGINT NOT NULL,
                usd DOUBLE PRECISION NOT NULL,
                tool_calls BIGINT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('held', 'committed', 'released')),
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                committed_at DOUBLE PRECISION,
                actual_tokens BIGINT,
                actual_usd DOUBLE PRECISION,
                actual_tool_calls BIGINT,
                over_commit SMALLINT NOT NULL DEFAULT 0
            )""",
            f"""CREATE INDEX IF NOT EXISTS roi_reservations_scope_state
                ON {p}roi_reservations (scope, state)""",
        ]

    def init_schema(self) -> None:
        """Create the tables if they do not exist (the migration)."""
        with self.transaction() as execute:
            for statement in self.schema_statements():
                execute(statement, ())

    # -- budgets ----------------------------------------------------------------------------

    def set_budget(self, budget: ScopeBudget) -> None:
        """Create or change a scope's limits.

        Raises:
            InvalidValueError: on a malformed scope.
        """
        check_scope(budget.scope)
        with self.transaction() as execute:
            execute(
                f"""INSERT INTO {self.prefix}roi_budgets (scope, tokens, usd, tool_calls, period)
                VALUES (%s, %s, %s, %s, %s)
                ON CONFLICT (scope) DO UPDATE SET tokens = excluded.tokens,
                    usd = excluded.usd, tool_calls = excluded.tool_calls,
                    period = excluded.period""",
                (budget.scope, budget.tokens, budget.usd, budget.tool_calls, budget.period),
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
        with self.transaction() as execute:
            if idempotency_key is not None:
                rows = execute(
                    f"SELECT {_RESERVATION_COLUMNS} FROM {self.prefix}roi_reservations "
                    "WHERE idempotency_key = %s",
                    (idempotency_key,),
                )
                if rows:
                    now = self._clock(execute)[0]
                    return _reservation(rows[0], now)
            self.lock_budgets(execute, levels)
            budgets = self._budgets(execute, levels)
            if scope not in budgets:
                raise UnknownScope(scope)
            now, day, month = self._clock(execute)
            for level in levels:
                budget = budgets.get(level)
                if budget is None:
                    continue
                used, _ = self._used(execute, level, now, _period_start(budget, day, month))
                for resource in RESOURCES:
                    limit = budget.limit(resource)
                    if limit is None:
                        continue
                    left = limit - used.get(resource)
                    wanted = amount.get(resource)
                    if wanted > left + _tolerance(resource):
                        raise BudgetExceeded(
                            resource=resource, scope=level, limit=left, requested=wanted
                        )
            reservation_id = uuid.uuid4().hex
            execute(
                f"""INSERT INTO {self.prefix}roi_reservations
                (id, scope, idempotency_key, tokens, usd, tool_calls, state, created_at,
                 expires_at)
                VALUES (%s, %s, %s, %s, %s, %s, 'held', %s, %s)""",
                (
                    reservation_id,
                    scope,
                    idempotency_key,
                    amount.tokens,
                    amount.usd,
                    amount.tool_calls,
                    now,
                    now + ttl,
                ),
            )
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

        More than was reserved is recorded as is and flagged (``over_commit``). Committing again
        with the same numbers returns the committed reservation and changes nothing.

        Raises:
            ReservationExpired: the hold ran past its TTL first (nothing recorded).
            ReservationConflict: the hold was released, or committed with other numbers.
            UnknownReservation: no such reservation.
        """
        actual = Amount.model_validate(actual)
        with self.transaction() as execute:
            row = self._locked_reservation(execute, _id(reservation))
            now = self._clock(execute)[0]
            current = _reservation(row, now)
            if current.state == "committed":
                if current.actual == actual:
                    return current
                msg = (
                    f"reservation {current.id} was already committed with {current.actual}; "
                    f"refusing {actual}"
                )
                raise ReservationConflict(msg)
            if current.state == "released":
                raise ReservationConflict(f"reservation {current.id} was released")
            if current.state == "expired":
                msg = (
                    f"reservation {current.id} expired at {current.expires_at:.3f} (now {now:.3f})"
                )
                raise ReservationExpired(msg)
            over = any(actual.get(r) > current.amount.get(r) + _tolerance(r) for r in RESOURCES)
            execute(
                f"""UPDATE {self.prefix}roi_reservations SET state = 'committed',
                committed_at = %s, actual_tokens = %s, actual_usd = %s, actual_tool_calls = %s,
                over_commit = %s WHERE id = %s""",
                (now, actual.tokens, actual.usd, actual.tool_calls, int(over), current.id),
            )
        if over:
            logger.warning(
                "over-commit in scope %s: reserved %s, spent %s (recorded and flagged)",
                current.scope,
                current.amount,
                actual,
            )
        return current.model_copy(
            update={"state": "committed", "actual": actual, "over_commit": over}
        )

    def release(self, reservation: Reservation | str) -> Reservation:
        """Free a hold. Releasing a committed or released reservation changes nothing.

        Raises:
            UnknownReservation: no such reservation.
        """
        with self.transaction() as execute:
            row = self._locked_reservation(execute, _id(reservation))
            now = self._clock(execute)[0]
            current = _reservation(row, now)
            if current.state not in ("held", "expired"):
                return current
            execute(
                f"UPDATE {self.prefix}roi_reservations SET state = 'released' WHERE id = %s",
                (current.id,),
            )
        return current.model_copy(update={"state": "released"})

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
            budgets = self._budgets(execute, levels)
            if scope not in budgets:
                raise UnknownScope(scope)
            now, day, month = self._clock(execute)
            remaining: dict[Resource, float | None] = dict.fromkeys(RESOURCES)
            own: tuple[Amount, Amount] | None = None
            over = False
            for level in levels:
                budget = budgets.get(level)
                if budget is None:
                    continue
                start = _period_start(budget, day, month)
                used, parts = self._used(execute, level, now, start)
                if level == scope:
                    own = parts
                    over = self._over_committed(execute, scope, start)
                for resource in RESOURCES:
                    limit = budget.limit(resource)
                    if limit is None:
                        continue
                    left = limit - used.get(resource)
                    current = remaining[resource]
                    remaining[resource] = left if current is None else min(current, left)
        assert own is not None
        return Balance(
            scope=scope,
            budget=budgets[scope],
            reserved=own[0],
            committed=own[1],
            remaining=remaining,
            over_committed=over,
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

    # -- helpers ----------------------------------------------------------------------------

    def _clock(self, execute: Execute) -> tuple[float, float, float]:
        (row,) = execute(f"SELECT {self.now_sql}, {self.day_start_sql}, {self.month_start_sql}", ())
        return float(row[0]), float(row[1]), float(row[2])

    def _budgets(self, execute: Execute, scopes: list[str]) -> dict[str, ScopeBudget]:
        marks = ", ".join(["%s"] * len(scopes))
        rows = execute(
            f"SELECT scope, tokens, usd, tool_calls, period FROM {self.prefix}roi_budgets "
            f"WHERE scope IN ({marks})",
            scopes,
        )
        return {
            row[0]: ScopeBudget(
                scope=row[0], tokens=row[1], usd=row[2], tool_calls=row[3], period=row[4]
            )
            for row in rows
        }

    def _used(
        self, execute: Execute, level: str, now: float, period_start: float
    ) -> tuple[Amount, tuple[Amount, Amount]]:
        """Holds plus this period's commits in ``level`` and below: (total, (held, committed))."""
        rows = execute(
            f"""SELECT
                COALESCE(SUM(CASE WHEN state = 'held' AND expires_at > %s
                    THEN tokens ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN state = 'held' AND expires_at > %s
                    THEN usd ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN state = 'held' AND expires_at > %s
                    THEN tool_calls ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN state = 'committed' AND committed_at >= %s
                    THEN actual_tokens ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN state = 'committed' AND committed_at >= %s
                    THEN actual_usd ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN state = 'committed' AND committed_at >= %s
                    THEN actual_tool_calls ELSE 0 END), 0)
            FROM {self.prefix}roi_reservations
            WHERE state IN ('held', 'committed')
                AND (scope = %s OR substr(scope, 1, %s) = %s)""",
            (
                now,
                now,
                now,
                period_start,
                period_start,
                period_start,
                level,
                len(level) + 1,
                level + "/",
            ),
        )
        t, u, c, at, au, ac = rows[0]
        held = Amount(tokens=int(t), usd=max(float(u), 0.0), tool_calls=int(c))
        committed = Amount(tokens=int(at), usd=max(float(au), 0.0), tool_calls=int(ac))
        return held + committed, (held, committed)

    def _over_committed(self, execute: Execute, scope: str, period_start: float) -> bool:
        rows = execute(
            f"""SELECT COUNT(*) FROM {self.prefix}roi_reservations
            WHERE state = 'committed' AND over_commit = 1 AND committed_at >= %s
                AND (scope = %s OR substr(scope, 1, %s) = %s)""",
            (period_start, scope, len(scope) + 1, scope + "/"),
        )
        return int(rows[0][0]) > 0

    def _locked_reservation(self, execute: Execute, reservation_id: str) -> tuple[Any, ...]:
        rows = execute(
            f"SELECT {_RESERVATION_COLUMNS} FROM {self.prefix}roi_reservations WHERE id = %s"
            + self.row_lock_sql,
            (reservation_id,),
        )
        if not rows:
            raise UnknownReservation(reservation_id)
        return rows[0]

    #: Appended to a SELECT of one reservation that is about to change.
    row_lock_sql: str = ""


def _id(reservation: Reservation | str) -> str:
    return reservation if isinstance(reservation, str) else reservation.id


def _period_start(budget: ScopeBudget, day: float, month: float) -> float:
    if budget.period == "daily":
        return day
    if budget.period == "monthly":
        return month
    return float("-inf")


def _tolerance(resource: Resource) -> float:
    return 1e-9 if resource == "usd" else 0.0


def _reservation(row: tuple[Any, ...], now: float) -> Reservation:
    (rid, scope, key, tokens, usd, calls, state, created, expires, at, au, ac, over) = row
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
