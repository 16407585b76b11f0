"""The rules every ledger backend applies alike, written once.

What fits, what is left, when a commit is a replay or an over-commit, how idempotency keys and
periods are kept: the SQL ledgers (`roi_agents.ledger._sql`) and the in-memory one
(`roi_agents.ledger.memory`) differ in how they store and lock, never in these.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from roi_agents.errors import BudgetExceeded, InvalidValueError, ReservationConflict
from roi_agents.ledger.base import Amount, Reservation, ScopeBudget
from roi_agents.types import RESOURCES, Resource

__all__ = [
    "check_extendable",
    "check_fits",
    "is_over_commit",
    "is_replayed_commit",
    "log_over_commit",
    "period_start",
    "remaining",
    "stored_key",
    "tolerance",
]

logger = logging.getLogger("roi_agents.ledger")


def tolerance(resource: Resource) -> float:
    """How far past a limit rounding may go: none for counts, 1e-9 USD."""
    return 1e-9 if resource == "usd" else 0.0


def period_start(budget: ScopeBudget, day: float, month: float) -> float:
    """When the scope's current period began (0: it has none), given the day's and month's."""
    if budget.period == "daily":
        return day
    if budget.period == "monthly":
        return month
    return 0.0


def check_fits(levels: Iterable[tuple[str, ScopeBudget, Amount]], amount: Amount) -> None:
    """Raise `BudgetExceeded` unless ``amount`` fits every level: (scope, limits, used).

    A zero amount of a resource always fits, even where nothing is left.
    """
    for scope, budget, used in levels:
        for resource in RESOURCES:
            limit = budget.limit(resource)
            if limit is None:
                continue
            left = limit - used.get(resource)
            wanted = amount.get(resource)
            if wanted > 0 and wanted > left + tolerance(resource):
                raise BudgetExceeded(resource=resource, scope=scope, limit=left, requested=wanted)


def remaining(levels: Iterable[tuple[ScopeBudget, Amount]]) -> dict[Resource, float | None]:
    """What a new hold could take, per resource: the least left over the levels (signed)."""
    left: dict[Resource, float | None] = dict.fromkeys(RESOURCES)
    for budget, used in levels:
        for resource in RESOURCES:
            limit = budget.limit(resource)
            if limit is None:
                continue
            here = limit - used.get(resource)
            current = left[resource]
            left[resource] = here if current is None else min(current, here)
    return left


def is_replayed_commit(current: Reservation, actual: Amount) -> bool:
    """Whether committing ``actual`` repeats the commit already recorded (nothing to do).

    Raises:
        ReservationConflict: the hold was released, or committed with other numbers.
    """
    if current.state == "committed":
        if current.actual == actual:
            return True
        msg = (
            f"reservation {current.id} was already committed with {current.actual}; "
            f"refusing {actual}"
        )
        raise ReservationConflict(msg)
    if current.state == "released":
        raise ReservationConflict(f"reservation {current.id} was released")
    return False


def check_extendable(current: Reservation) -> None:
    """Raise `ReservationConflict` unless the hold is still held (not spent, freed or expired).

    An expired hold has left the counters already: reserve again instead.
    """
    if current.state != "held":
        msg = f"reservation {current.id} is {current.state}: only a held reservation is extended"
        raise ReservationConflict(msg)


def is_over_commit(current: Reservation, actual: Amount) -> bool:
    """Whether a commit is flagged: more than was held, or after the hold's TTL ran out."""
    return current.state == "expired" or any(
        actual.get(r) > current.amount.get(r) + tolerance(r) for r in RESOURCES
    )


def log_over_commit(reservation: Reservation, actual: Amount) -> None:
    """Say, in the log, that a spend beyond its hold was recorded (and flagged)."""
    logger.warning(
        "over-commit in scope %s: reserved %s, spent %s%s (recorded and flagged)",
        reservation.scope,
        reservation.amount,
        actual,
        " after the hold expired" if reservation.state == "expired" else "",
    )


def stored_key(scope: str, key: str | None) -> str | None:
    """An idempotency key as stored: prefixed by its scope and a newline.

    A scope has no newline, so the pair is unique and one tenant's key never matches another's.

    Raises:
        InvalidValueError: an empty key, one over 1024 bytes, or one with NUL or lone surrogates.
    """
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key.encode("utf-8", "replace")) > 1024:
        raise InvalidValueError("idempotency_key", "a non-empty string of at most 1024 bytes")
    if any(c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF for c in key):
        raise InvalidValueError("idempotency_key", "no NUL or lone surrogates")
    return f"{scope}\n{key}"
