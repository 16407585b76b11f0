"""The ledger's vocabulary and protocol: scopes, amounts, reservations, balances.

Scopes are ``/``-separated paths from the widest to the narrowest level, e.g.
``"acme/bob/thread-42"`` for tenant ``acme``, user ``bob``, thread ``thread-42``. A reservation in
a scope must fit in that scope's budget and in the budget of every ancestor that has one.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from roi_agents.errors import InvalidValueError
from roi_agents.types import MAX_COUNT, MAX_USD, RESOURCES, Budget, Cap, Count, Resource, Spend, Usd

__all__ = [
    "MAX_COUNT",
    "MAX_SCOPE_BYTES",
    "MAX_USD",
    "Amount",
    "Balance",
    "Ledger",
    "Period",
    "Reservation",
    "ReservationState",
    "ScopeBudget",
    "ancestors",
    "check_scope",
    "check_ttl",
]

Period = Literal["daily", "monthly"]
ReservationState = Literal["held", "committed", "released", "expired"]

# Amounts are exact types (no "5", no True) and bounded to what every backend's columns hold
# exactly (BIGINT; a double's integer range); larger values are refused with the field named.
_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)
MAX_SCOPE_BYTES = 512


class Amount(BaseModel):
    """A multi-resource quantity: what is reserved or spent. Adds with ``+``."""

    model_config = _STRICT

    tokens: Count = 0
    usd: Usd = 0.0
    tool_calls: Count = 0

    @classmethod
    def of(cls, spend: Spend) -> Amount:
        """The amount of a `Spend` (input plus output tokens)."""
        return cls(tokens=spend.tokens, usd=spend.usd, tool_calls=spend.tool_calls)

    @classmethod
    def of_cap(cls, cap: Cap) -> Amount:
        """What to reserve for a decision's cap (an uncapped resource reserves nothing)."""
        return cls(tokens=cap.tokens or 0, usd=cap.usd or 0.0, tool_calls=cap.tool_calls or 0)

    def get(self, resource: Resource) -> float:
        """The quantity of one resource."""
        return float(getattr(self, resource))

    def __add__(self, other: Amount) -> Amount:
        return Amount(
            tokens=self.tokens + other.tokens,
            usd=self.usd + other.usd,
            tool_calls=self.tool_calls + other.tool_calls,
        )


class ScopeBudget(BaseModel):
    """The limits of one scope; ``None`` is unlimited.

    With a period, usage resets each day or month (UTC, by the database's clock).
    """

    model_config = _STRICT

    scope: str
    tokens: Count | None = None
    usd: Usd | None = None
    tool_calls: Count | None = None
    period: Period | None = None

    def limit(self, resource: Resource) -> float | None:
        """The limit on one resource, ``None`` when unlimited."""
        value: float | None = getattr(self, resource)
        return value


class Reservation(BaseModel):
    """A hold on part of a budget, until committed, released or expired.

    Attributes:
        id: the ledger's id for it.
        scope: where it was made.
        amount: what it holds.
        state: ``held``, ``committed``, ``released`` or ``expired`` (held past its TTL).
        created_at: database time, seconds since the epoch.
        expires_at: database time after which a hold no longer counts.
        idempotency_key: the caller's key; reserving again with it returns this reservation.
        actual: what was really spent, once committed.
        over_commit: True when ``actual`` exceeds ``amount`` on some resource (kept, flagged).
    """

    model_config = _STRICT

    id: str
    scope: str
    amount: Amount
    state: ReservationState
    created_at: float
    expires_at: float
    idempotency_key: str | None = None
    actual: Amount | None = None
    over_commit: bool = False


class Balance(BaseModel):
    """Where a scope stands now.

    Attributes:
        scope: the scope.
        budget: its own limits.
        reserved: active holds in the scope and below.
        committed: committed spend in the scope and below, this period.
        remaining: what a new reservation here could take: the least, over the scope and its
            ancestors, of limit minus holds minus commits (``None``: unlimited). Negative only
            after a flagged over-commit.
        over_committed: whether a flagged over-commit counts in this period.
    """

    model_config = _STRICT

    scope: str
    budget: ScopeBudget
    reserved: Amount
    committed: Amount
    remaining: dict[Resource, float | None]
    over_committed: bool

    def as_budget(self) -> Budget:
        """What is left as a `Budget` for the controller (negatives count as zero)."""
        left: dict[str, float | int | None] = {}
        for resource in RESOURCES:
            value = self.remaining.get(resource)
            if value is None:
                continue
            value = max(value, 0.0)
            left[resource] = value if resource == "usd" else math.floor(value + 1e-9)
        return Budget.model_validate(left)


@runtime_checkable
class Ledger(Protocol):
    """Budgets shared by many workers: reserve before spending, commit after.

    Every backend gives the same guarantees: a reservation that does not fit in the scope or
    any ancestor is refused with `BudgetExceeded`; commit and release are idempotent; holds
    expire after their TTL; times come from the backend, not the caller's clock.
    """

    def init_schema(self) -> None:
        """Create the backend's tables if they are missing (safe to repeat)."""
        ...

    def set_budget(self, budget: ScopeBudget) -> None:
        """Create or change a scope's limits."""
        ...

    def reserve(
        self, scope: str, amount: Amount, *, ttl: float, idempotency_key: str | None = None
    ) -> Reservation:
        """Hold ``amount`` in ``scope`` for ``ttl`` seconds, or raise `BudgetExceeded`."""
        ...

    def commit(self, reservation: Reservation | str, actual: Amount) -> Reservation:
        """Record what was really spent against a hold; the rest is freed."""
        ...

    def release(self, reservation: Reservation | str) -> Reservation:
        """Free a hold without spending it."""
        ...

    def extend(self, reservation: Reservation | str, *, ttl: float) -> Reservation:
        """Keep a hold ``ttl`` more seconds from now (a call still running near its TTL)."""
        ...

    def balance(self, scope: str) -> Balance:
        """Where ``scope`` stands now."""
        ...

    def get(self, reservation_id: str) -> Reservation:
        """A reservation as the ledger sees it now."""
        ...

    async def areserve(
        self, scope: str, amount: Amount, *, ttl: float, idempotency_key: str | None = None
    ) -> Reservation:
        """Async `reserve`."""
        ...

    async def acommit(self, reservation: Reservation | str, actual: Amount) -> Reservation:
        """Async `commit`."""
        ...

    async def arelease(self, reservation: Reservation | str) -> Reservation:
        """Async `release`."""
        ...

    async def aextend(self, reservation: Reservation | str, *, ttl: float) -> Reservation:
        """Async `extend`."""
        ...

    async def abalance(self, scope: str) -> Balance:
        """Async `balance`."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def check_scope(scope: str) -> str:
    """Return ``scope`` if it is a well-formed path, else raise `InvalidValueError`.

    The grammar: non-empty parts joined by ``/``; no control characters (a scope is a name: in
    logs, spans and keys) and no lone surrogates; at most ``MAX_SCOPE_BYTES`` bytes of UTF-8.
    """
    if not isinstance(scope, str) or not scope or any(not part for part in scope.split("/")):
        raise InvalidValueError(
            "scope", f"expected a path like 'tenant/user/thread', got {scope!r}"
        )
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in scope):
        raise InvalidValueError(
            "scope", f"no control characters or lone surrogates in a scope, got {scope!r}"
        )
    if len(scope.encode("utf-8")) > MAX_SCOPE_BYTES:
        raise InvalidValueError("scope", f"at most {MAX_SCOPE_BYTES} bytes of UTF-8")
    return scope


def ancestors(scope: str) -> list[str]:
    """The scope and every ancestor, widest first: ``a/b/c`` -> ``[a, a/b, a/b/c]``."""
    parts = check_scope(scope).split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def check_ttl(ttl: float) -> float:
    """Return ``ttl`` if it is a finite number of seconds > 0, else raise `InvalidValueError`."""
    if not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0:
        raise InvalidValueError("ttl", f"must be a finite number of seconds > 0, got {ttl!r}")
    return float(ttl)
