"""A ToolNode that runs only the tool calls the budget pays for, reserved before they run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import BaseTool
from langgraph.prebuilt import ToolNode

from roi_agents.errors import BudgetExceeded
from roi_agents.session import BudgetSession, Hold
from roi_agents.types import Budget, Decision, Spend
from roi_agents_langgraph.state import BudgetState, current_step, remaining

if TYPE_CHECKING:
    from roi_agents_langgraph.nodes import BudgetControllerNode

__all__ = ["BudgetedToolNode", "tool_call_allowance"]


def tool_call_allowance(state: BudgetState, left: Budget | None = None) -> int | None:
    """How many tool calls the run may still make.

    The decision's cap and what the budget has left (``left``, else the state's budget less its
    spend), whichever is smaller; ``None`` when neither limits them.
    """
    limits: list[int] = []
    left_calls = (left or remaining(state)).tool_calls
    if left_calls is not None:
        limits.append(left_calls)
    decision = state.get("decision")
    if decision is not None:
        cap = Decision.model_validate(decision).cap.tool_calls
        if cap is not None:
            limits.append(cap)
    return min(limits) if limits else None


class BudgetedToolNode(RunnableLambda[Any, dict[str, Any]]):
    """LangGraph's `ToolNode`, refusing the tool calls beyond the allowance.

    The calls of the last AI message run in order while the allowance lasts (see
    `tool_call_allowance`); each call beyond it gets a `ToolMessage` with ``status="error"``
    saying it was refused and why, so the model sees it and the graph goes on. Nothing runs
    unpaid. The update adds the calls that ran to ``spent``.

    With the graph's ``control`` node, the calls are reserved in the run's ledger scope before
    they run and charged to the step, so parallel branches never run more than the budget
    allows; `BudgetControllerNode.settle` then counts them in the step's spend (the update has
    no ``spent`` of its own).

    Args:
        tools: the tools, as for `ToolNode`.
        messages_key: the state key of the messages.
        control: the graph's `BudgetControllerNode`, whose run session holds the budget.
    """

    def __init__(
        self,
        tools: Sequence[BaseTool],
        *,
        messages_key: str = "messages",
        control: BudgetControllerNode | None = None,
        name: str = "tools",
    ) -> None:
        self.tool_node = ToolNode(list(tools), messages_key=messages_key)
        self.messages_key = messages_key
        self.control = control
        super().__init__(self._run, afunc=self._arun, name=name)

    def _hold(
        self, state: Any, session: BudgetSession | None, calls: list[Any]
    ) -> tuple[BudgetSession | None, Hold | None, int]:
        """Reserve the calls in the run's session (none, if a parallel branch was first)."""
        n = len(calls)
        if session is None or n == 0:
            return None, None, n
        current = current_step(state)
        try:
            hold = session.reserve_tool_calls(
                n,
                step_id=current[0].id if current else "tools",
                tools=[call["name"] for call in calls],
            )
        except BudgetExceeded:
            return session, None, 0
        return session, hold, n

    def _split(self, state: Any) -> tuple[Any, list[dict[str, Any]], int, Any]:
        messages = state[self.messages_key]
        last = messages[-1]
        if not isinstance(last, AIMessage):
            msg = f"the last message must be an AIMessage with tool calls, got {type(last)}"
            raise TypeError(msg)
        run = self.control.session(state) if self.control is not None else None
        allowance = tool_call_allowance(state, run.remaining() if run is not None else None)
        calls = list(last.tool_calls)
        n = len(calls) if allowance is None else max(0, min(allowance, len(calls)))
        session, hold, n = self._hold(state, run, calls[:n])
        allowed, refused = calls[:n], calls[n:]
        narrowed = {
            **state,
            self.messages_key: [*messages[:-1], last.model_copy(update={"tool_calls": allowed})],
        }
        refusals = [
            {
                "tool_call_id": call["id"],
                "name": call["name"],
                "content": (
                    f"Refused: the tool-call budget allows {n} of the {len(calls)} calls "
                    "requested in this turn; this one was not run."
                ),
            }
            for call in refused
        ]
        if refused and run is not None:  # the run's trace says what was refused
            refusal = BudgetExceeded(
                resource="tool_calls", scope=run.scope, limit=n, requested=len(calls)
            )
            run.run_trace().refused(refusal)
        return narrowed, refusals, n, (session, hold)

    def _result(
        self, ran: dict[str, Any] | None, refusals: list[dict[str, Any]], n: int
    ) -> dict[str, Any]:
        messages = list((ran or {}).get(self.messages_key, []))
        messages += [ToolMessage(status="error", **r) for r in refusals]
        if self.control is not None:  # charged to the step: its settle counts them
            return {self.messages_key: messages}
        return {self.messages_key: messages, "spent": Spend(tool_calls=n).model_dump()}

    def _run(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        narrowed, refusals, n, (session, hold) = self._split(state)
        try:
            ran = self.tool_node.invoke(narrowed, config) if n else None
        finally:  # the calls ran (or started): charged either way
            if hold is not None:
                session.commit(hold, Spend(tool_calls=n))
        return self._result(ran, refusals, n)

    async def _arun(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        narrowed, refusals, n, (session, hold) = self._split(state)
        try:
            ran = await self.tool_node.ainvoke(narrowed, config) if n else None
        finally:
            if hold is not None:
                await session.acommit(hold, Spend(tool_calls=n))
        return self._result(ran, refusals, n)
