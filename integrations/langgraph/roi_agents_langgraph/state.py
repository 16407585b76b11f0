"""The graph state roi-agents reads and writes, and its reducers.

Everything in it is plain JSON (model dumps), so it survives any LangGraph checkpointer.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, NotRequired

from langgraph.types import interrupt
from typing_extensions import TypedDict

from roi_agents.errors import InvalidValueError
from roi_agents.session import extra_budget
from roi_agents.types import Budget, Decision, Spend, Step

__all__ = ["BudgetState", "add_spend", "ask_for_budget", "current_step", "remaining", "union"]


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
        scope: the ledger scope the run spends from (set by the controller node).
        decisions: every decision taken, in order; updates append.
        charged: ids of the calls already charged; a call is never charged twice.
    """

    budget: dict[str, Any]
    spent: NotRequired[Annotated[dict[str, Any], add_spend]]
    pending: NotRequired[list[dict[str, Any]]]
    forecasts: NotRequired[list[dict[str, Any]]]
    decision: NotRequired[dict[str, Any] | None]
    scope: NotRequired[str]
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


def ask_for_budget(question: dict[str, Any]) -> Budget | None:
    """Ask a human for more budget with LangGraph's ``interrupt`` (needs a checkpointer).

    Resume with ``Command(resume=...)``: ``None`` (or ``False``, ``0``) for no more, a positive
    number of tokens, or a mapping such as ``{"tokens": 2000}`` or ``{"usd": 0.5}`` (see
    `roi_agents.session.extra_budget`). An answer that is none of these is not taken: the
    question is asked again with the error in ``"error"``, so a typo never wedges the thread.
    """
    payload = {**question, "resume_with": "None to stop, or e.g. {'tokens': 2000}"}
    while True:
        try:
            return extra_budget(interrupt(payload))
        except InvalidValueError as error:
            payload = {**payload, "error": str(error)}
