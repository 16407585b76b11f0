"""Errors raised by roi-agents.

The tree::

    RoiAgentsError
    ├── InvalidValueError (also a ValueError)   bad input from the caller; names the field
    ├── BudgetExceeded                          a run-time budget ran out; carries the numbers
    ├── DataError (also a ValueError)           a replay file that does not follow the format
    ├── MissingExtra (also an ImportError)      a feature whose optional dependencies are absent
    └── LedgerError                             a ledger call that cannot be carried out
        ├── LedgerUnavailable                   the database is unreachable or dropped the call
        ├── UnknownScope (also InvalidValueError)     no budget set for the scope
        ├── UnknownReservation (also InvalidValueError)
        └── ReservationConflict                 commit of a released hold, or a second commit
                                                with other numbers

Developer mistakes (`InvalidValueError`, `DataError`) are kept apart from run-time exhaustion
(`BudgetExceeded`), which a graph is expected to catch and report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "BudgetExceeded",
    "DataError",
    "InvalidValueError",
    "LedgerError",
    "LedgerUnavailable",
    "MissingExtra",
    "ReservationConflict",
    "RoiAgentsError",
    "UnknownReservation",
    "UnknownScope",
    "first_problem",
]


class RoiAgentsError(Exception):
    """Base class of every error roi-agents raises on purpose."""


class MissingExtra(RoiAgentsError, ImportError):
    """A feature needs an optional dependency that is not installed; says which extra has it.

    Example:
        >>> print(MissingExtra("cli", "rich"))
        this needs rich, from the extra [cli]: pip install 'roi-agents[cli]'
    """

    def __init__(self, extra: str, module: str | None) -> None:
        self.extra = extra
        what = module or "a module"
        super().__init__(
            f"this needs {what}, from the extra [{extra}]: pip install 'roi-agents[{extra}]'",
            name=module,
        )


class InvalidValueError(RoiAgentsError, ValueError):
    """A value given by the caller is out of range or inconsistent.

    Attributes:
        field: dotted name of the offending field, e.g. ``"forecasts[3].p_success"``.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class DataError(RoiAgentsError, ValueError):
    """A replay file does not follow the documented format.

    Attributes:
        path: the file.
        line: 1-based line number, or ``None`` when the problem is the file as a whole.
    """

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


class BudgetExceeded(RoiAgentsError):
    """A spend would go beyond what a budget has left.

    Attributes:
        resource: ``"tokens"``, ``"usd"`` or ``"tool_calls"``.
        scope: the budget that ran out (``"run"`` unless a ledger scope is named).
        limit: what the scope had left.
        requested: what the refused call or reservation asked for.
    """

    def __init__(self, *, resource: str, scope: str, limit: float, requested: float) -> None:
        self.resource = resource
        self.scope = scope
        self.limit = limit
        self.requested = requested
        super().__init__(
            f"budget exceeded: {resource} in scope {scope!r}: requested {requested:g}, "
            f"{limit:g} left"
        )


class LedgerError(RoiAgentsError):
    """A ledger call that cannot be carried out; nothing was changed."""


class LedgerUnavailable(LedgerError):
    """The database cannot be reached, or dropped the connection during the call.

    Whether the call took effect is not known: commit and release, and a reserve with an
    idempotency key, are safe to call again with the same arguments.
    """


class UnknownScope(LedgerError, InvalidValueError):
    """No budget was set for the scope."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        InvalidValueError.__init__(self, "scope", f"no budget set for scope {scope!r}")


class UnknownReservation(LedgerError, InvalidValueError):
    """No reservation has this id."""

    def __init__(self, reservation_id: str) -> None:
        self.reservation_id = reservation_id
        InvalidValueError.__init__(self, "reservation", f"no reservation {reservation_id!r}")


class ReservationConflict(LedgerError):
    """The reservation's state does not allow the call (e.g. commit after release)."""


def first_problem(error: ValidationError, whole: str) -> str:
    """The first problem pydantic found, in one line: ``where: what``.

    ``where`` is the field's path, dotted, or ``whole`` when the problem is the whole value.
    """
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or whole
    return f"{where}: {first['msg']}"
