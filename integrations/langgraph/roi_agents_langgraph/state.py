"""The graph state roi-agents reads and writes, and its reducers.

Everything in it is plain JSON (model dumps), so it survives any LangGraph checkpointer.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, NotRequired

from typing_extensions import TypedDict

from roi_agents.types import Budget, Decision, Spend, Step

__all__ = ["BudgetState", "add_spend", "current_step", "remaining", "union"]


def add_spend(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Reducer: spends add up."""
    total = Spend.model_validate(left or {}) + Spend.model_validate(right or {})
    return total.model_dump()


def union(left: list[str] | None, right: list[str] | None) -> list[str]:
    """Reducer: an ordered set of ids."""
    out = list(left or [])
    out.extend(x for x in right or [] if x not in out)
    return out


class BudgetState(TypedDict):
    """State keys of a budgeted graph; mix them into your own state schema.

    Attributes:
        budget: the run's `Budget`, dumped.
        spent: what the run has spent (`Spend`, dumped); updates add up.
        pending: the steps still to run (`Step` dumps), the next one first.
        forecasts: the forecasts for the pending steps (`Forecast` dumps).
        decision: the decision for the next step, or ``None``.
        reservation: the ledger reservation holding the next step's cap, if a ledger is used.
        decisions: every decision taken, in order; updates append.
        charged: ids of the calls already charged; a call is never charged twice.
    """

    budget: dict[str, Any]
    spent: NotRequired[Annotated[dict[str, Any], add_spend]]
    pending: NotRequired[list[dict[str, Any]]]
    forecasts: NotRequired[list[dict[str, Any]]]
    decision: NotRequired[dict[str, Any] | None]
    reservation: NotRequired[str | None]
    decisions: NotRequired[Annotated[list[dict[str, Any]], operator.add]]
    charged: NotRequired[Annotated[list[str], union]]


def remaining(state: BudgetState) -> Budget:
    """What the run has left: budget minus spent, floored at zero."""
    budget = Budget.model_validate(state["budget"])
    return budget.left_after(Spend.model_validate(state.get("spent") or {}))


def current_step(state: BudgetState) -> tuple[Step, Decision] | None:
    """The next step and its decision, when the controller has decided it."""
    pending = state.get("pending") or []
    decision = state.get("decision")
    if not pending or decision is None:
        return None
    return Step.model_validate(pending[0]), Decision.model_validate(decision)
