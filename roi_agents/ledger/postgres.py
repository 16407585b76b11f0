"""The PostgreSQL ledger, for many workers on many machines (extra ``[postgres]``)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from roi_agents.errors import InvalidValueError, LedgerError, LedgerUnavailable, MissingExtra
from roi_agents.ledger._sql import Execute, SQLLedger, iter_rows

__all__ = ["PostgresLedger"]


class PostgresLedger(SQLLedger):
    """A ledger in PostgreSQL through a psycopg 3 connection pool.

    A reservation locks the budget rows of its scope and of every ancestor
    (``SELECT ... FOR UPDATE``, in scope order, so two workers never deadlock) before it reads
    what they have used, so concurrent workers on any number of machines cannot overspend.
    Create the tables once with ``roi-agents ledger init --url URL`` (or `init_schema`).

    Args:
        url: a libpq connection string, e.g. ``postgresql://user@host:5432/db``.
        schema: the schema holding the tables (created by `init_schema`).
        min_size: connections the pool keeps open.
        max_size: connections the pool may open.
        timeout: seconds to wait for a pooled connection.

    Raises:
        InvalidValueError: on a schema name that is not a plain identifier.
    """

    now_sql = "extract(epoch from clock_timestamp())"
    day_start_sql = (
        "extract(epoch from date_trunc('day', clock_timestamp() AT TIME ZONE 'UTC') "
        "AT TIME ZONE 'UTC')"
    )
    month_start_sql = (
        "extract(epoch from date_trunc('month', clock_timestamp() AT TIME ZONE 'UTC') "
        "AT TIME ZONE 'UTC')"
    )
    row_lock_sql = " FOR UPDATE"
    scope_type = 'TEXT COLLATE "C"'

    def __init__(
        self,
        url: str,
        *,
        schema: str = "roi_agents",
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
    ) -> None:
        try:
            from psycopg_pool import ConnectionPool
        except ImportError as error:
            raise MissingExtra("postgres", error.name) from error
        import psycopg

        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as error:  # at once, not after the pool's time-out
            raise InvalidValueError("url", f"not a PostgreSQL URL: {error}") from None
        if not schema.isidentifier() or not schema.isascii():
            raise InvalidValueError("schema", f"must be a plain identifier, got {schema!r}")
        if len(schema) > 63:  # PostgreSQL would cut it, and two ledgers could share one
            raise InvalidValueError("schema", f"at most 63 characters, got {len(schema)}")
        if schema.lower().startswith("pg_") or schema.lower() == "information_schema":
            raise InvalidValueError("schema", f"{schema!r} is reserved by PostgreSQL")
        self.schema = schema
        self.prefix = f'"{schema}".'
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            open=True,
            # A connection the server closed (a restart) is replaced before it is handed out.
            check=ConnectionPool.check_connection,
            kwargs={"connect_timeout": max(1, math.ceil(min(timeout, 5.0)))},
        )

    def schema_statements(self) -> list[str]:
        """Create the schema, then the tables."""
        return [f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"', *super().schema_statements()]

    @contextmanager
    def transaction(self) -> Iterator[Execute]:
        """A pooled connection in one transaction.

        Raises:
            LedgerError: the ledger's tables are missing (run ``roi-agents ledger init``).
            LedgerUnavailable: the database cannot be reached, or dropped the connection.
        """
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection() as connection, connection.transaction():
                cursor = connection.cursor()

                def execute(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
                    cursor.execute(sql, tuple(params) or None)
                    return list(iter_rows(cursor))

                yield execute
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as error:
            msg = (
                f"the ledger's tables are missing in schema {self.schema!r} "
                f"(run: roi-agents ledger init --schema {self.schema}): {error}"
            )
            raise LedgerError(msg) from None
        except PoolTimeout as error:
            raise LedgerUnavailable(f"cannot reach PostgreSQL: {error}") from None
        except psycopg.OperationalError as error:  # the server went away during the call
            raise LedgerUnavailable(f"lost the connection to PostgreSQL: {error}") from None

    def lock_budgets(self, execute: Execute, scopes: list[str]) -> None:
        """Row locks on the scopes' budget rows, in a fixed order."""
        marks = ", ".join(["%s"] * len(scopes))
        execute(
            f"SELECT scope FROM {self.prefix}roi_budgets WHERE scope IN ({marks}) "
            "ORDER BY scope FOR UPDATE",
            sorted(scopes),
        )

    def drop_schema(self) -> None:
        """Drop the schema and everything in it (tests, teardown)."""
        with self.transaction() as execute:
            execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE', ())

    def close(self) -> None:
        """Close the pool."""
        self._pool.close()
