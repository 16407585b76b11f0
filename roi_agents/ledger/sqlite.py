"""The SQLite ledger: a file shared by the threads and processes of one machine."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from roi_agents.ledger._sql import Execute, SQLLedger, iter_rows

__all__ = ["SQLiteLedger"]

_EPOCH = "(julianday('now') - 2440587.5) * 86400.0"


class SQLiteLedger(SQLLedger):
    """The embedded default: a ledger in one SQLite file, in WAL mode.

    Each reservation runs in a ``BEGIN IMMEDIATE`` transaction, which takes the database's write
    lock before reading, so reserves are atomic across the threads and processes of a machine.
    Each thread gets its own connection. The tables are created on first use.

    Args:
        path: the database file (created if missing).
        timeout: seconds a writer waits for the lock before failing.

    Example:
        >>> from roi_agents.ledger import Amount, ScopeBudget, SQLiteLedger
        >>> ledger = SQLiteLedger(":memory:")
        >>> ledger.set_budget(ScopeBudget(scope="acme", tokens=1000))
        >>> hold = ledger.reserve("acme", Amount(tokens=400), ttl=60)
        >>> ledger.balance("acme").remaining["tokens"]
        600.0
    """

    now_sql = _EPOCH
    day_start_sql = "(julianday('now', 'start of day') - 2440587.5) * 86400.0"
    month_start_sql = "(julianday('now', 'start of month') - 2440587.5) * 86400.0"

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        # SQLite has one writer at a time. Threads of this process queue on this lock (fair and
        # immediate) instead of in SQLite's busy handler, which sleeps and retries and starves
        # some waiters; other processes still wait in the busy handler.
        self._writer = threading.Lock()
        self.init_schema()

    def _connect(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
            with self._guard:
                self._connections.append(connection)
        return connection

    @contextmanager
    def transaction(self) -> Iterator[Execute]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on error."""
        connection = self._connect()

        def execute(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
            return list(iter_rows(connection.execute(sql.replace("%s", "?"), tuple(params))))

        with self._writer:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield execute
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def lock_budgets(self, execute: Execute, scopes: list[str]) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already holds the database's write lock."""

    def close(self) -> None:
        """Close every thread's connection."""
        with self._guard:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()
