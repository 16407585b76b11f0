"""The graph state roi-agents reads and writes, and its reducers.

Everything in it is plain JSON (model dumps), so it survives any LangGraph checkpointer.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Annotated, Any, NotRequired

from langgraph.types import interrupt
from pydantic import ValidationError
from typing_extensions import TypedDict

from roi_agents.errors import InvalidValueError
from roi_agents.session import BudgetQuestion, check_budget, extra_budget
from roi_agents.types import Budget, Decision, Spend, Step

__all__ = [
    "BudgetState",
    "add_spend",
    "ask_for_budget",
    "current_step",
    "pending_steps",
    "remaining",
    "run_budget",
    "union",
]


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


_INPUT = (
    "invoke the graph with {'budget': Budget(tokens=...).model_dump(), "
    "'pending': [Step(...).model_dump(), ...]}"
)


def _invalid(key: str, error: ValidationError) -> InvalidValueError:
    first = error.errors()[0]
    where = "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in first["loc"])
    return InvalidValueError(key, f"{key}{where}: {first['msg']} ({_INPUT})")


def run_budget(state: Mapping[str, Any]) -> Budget:
    """The run's `Budget` from its state.

    Raises:
        InvalidValueError: the key is missing or is not a budget; the message names the key
            and the shape the graph's input should have.
    """
    if state.get("budget") is None:
        raise InvalidValueError("budget", f"the graph's state has no 'budget': {_INPUT}")
    try:
        budget = Budget.model_validate(state["budget"])
    except ValidationError as error:
        raise _invalid("budget", error) from None
    return check_budget(budget)


def pending_steps(state: Mapping[str, Any]) -> list[Step]:
    """The run's pending steps from its state, the next one first.

    Raises:
        InvalidValueError: the key is missing (a graph invoked with ``steps``, say: LangGraph
            drops keys its state does not have) or holds something other than steps.
    """
    pending = state.get("pending")
    if pending is None:
        raise InvalidValueError("pending", f"the graph's state has no 'pending' steps: {_INPUT}")
    if not isinstance(pending, list | tuple):
        msg = f"expected a list of steps, got {type(pending).__name__} ({_INPUT})"
        raise InvalidValueError("pending", msg)
    steps = []
    for index, step in enumerate(pending):
        try:
            steps.append(Step.model_validate(step))
        except ValidationError as error:
            raise _invalid(f"pending[{index}]", error) from None
    return steps


def remaining(state: BudgetState) -> Budget:
    """What the run has left: budget minus spent, floored at zero."""
    return run_budget(state).left_after(Spend.model_validate(state.get("spent") or {}))


def current_step(state: BudgetState) -> tuple[Step, Decision] | None:
    """The next step and its decision, when the controller has decided it."""
    decision = state.get("decision")
    if decision is None or not state.get("pending"):
        return None
    return pending_steps(state)[0], Decision.model_validate(decision)


def ask_for_budget(question: BudgetQuestion) -> Budget | None:
    """Ask a human for more budget with LangGraph's ``interrupt`` (needs a checkpointer).

    The interrupt's value is the `BudgetQuestion` as JSON, ``None`` fields left out: what the
    step needs per resource, what is left, the shortfall, the step's options
    (``BudgetQuestion.model_validate(value)`` reads it back). Resume with
    ``Command(resume=...)``: ``0`` (or ``False``) to decline, a positive number of tokens, or a
    mapping such as ``{"tokens": 2000}`` or ``{"usd": 0.5}`` (see
    `roi_agents.session.extra_budget`; LangGraph takes ``resume=None`` for no answer at all).
    An answer that is none of these is not taken: the question is asked again with the error
    in ``error``, so a typo never wedges the thread.
    """
    while True:
        try:
            return extra_budget(interrupt(question.model_dump(mode="json", exclude_none=True)))
        except InvalidValueError as error:
            question = question.model_copy(update={"error": str(error)})
