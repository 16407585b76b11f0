"""Shared budgets: many agents, one budget, never overspent.

Backends: `MemoryLedger` (one process), `SQLiteLedger` (a file, the embedded default),
`PostgresLedger` (many workers on many machines). `open_ledger` picks one from a URL.
"""

from __future__ import annotations

from roi_agents.errors import InvalidValueError
from roi_agents.ledger.base import (
    Amount,
    Balance,
    Ledger,
    Period,
    Reservation,
    ReservationState,
    ScopeBudget,
)
from roi_agents.ledger.memory import MemoryLedger
from roi_agents.ledger.sqlite import SQLiteLedger

__all__ = [
    "Amount",
    "Balance",
    "Ledger",
    "MemoryLedger",
    "Period",
    "Reservation",
    "ReservationState",
    "SQLiteLedger",
    "ScopeBudget",
    "open_ledger",
]


def open_ledger(url: str, *, schema: str = "roi_agents", timeout: float = 30.0) -> Ledger:
    """Open a ledger from a URL.

    ``memory:`` is a `MemoryLedger`; ``sqlite:///path/to.db`` (or a plain path ending in
    ``.db``/``.sqlite``) an `SQLiteLedger`; ``postgresql://...`` a `PostgresLedger` in ``schema``.
    ``timeout``: seconds to wait for the database (a lock, a connection).

    Raises:
        InvalidValueError: on any other URL.
    """
    if url == "memory:":
        return MemoryLedger()
    if url.startswith("sqlite:///"):
        return SQLiteLedger(url.removeprefix("sqlite:///"), timeout=timeout)
    if url.endswith((".db", ".sqlite")) and "://" not in url:
        return SQLiteLedger(url, timeout=timeout)
    if url.startswith(("postgresql://", "postgres://")):
        from roi_agents.ledger.postgres import PostgresLedger

        return PostgresLedger(url, schema=schema, timeout=timeout)
    msg = f"expected memory:, sqlite:///PATH or postgresql://..., got {url!r}"
    raise InvalidValueError("url", msg)
