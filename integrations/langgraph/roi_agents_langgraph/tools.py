"""A ToolNode that runs only the tool calls the budget pays for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import BaseTool
from langgraph.prebuilt import ToolNode

from roi_agents.types import Decision, Spend
from roi_agents_langgraph.state import BudgetState, remaining

__all__ = ["BudgetedToolNode", "tool_call_allowance"]


def tool_call_allowance(state: BudgetState) -> int | None:
    """How many tool calls the run may still make.

    The decision's cap and what the budget has left, whichever is smaller; ``None`` when neither
    limits them.
    """
    limits: list[int] = []
    left = remaining(state).tool_calls
    if left is not None:
        limits.append(left)
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

    Args:
        tools: the tools, as for `ToolNode`.
        messages_key: the state key of the messages.
    """

    def __init__(
        self,
        tools: Sequence[BaseTool],
        *,
        messages_key: str = "messages",
        name: str = "tools",
    ) -> None:
        self.tool_node = ToolNode(list(tools), messages_key=messages_key)
        self.messages_key = messages_key
        super().__init__(self._run, afunc=self._arun, name=name)

    def _split(self, state: Any) -> tuple[Any, list[dict[str, Any]], int]:
        messages = state[self.messages_key]
        last = messages[-1]
        if not isinstance(last, AIMessage):
            msg = f"the last message must be an AIMessage with tool calls, got {type(last)}"
            raise TypeError(msg)
        allowance = tool_call_allowance(state)
        calls = list(last.tool_calls)
        n = len(calls) if allowance is None else max(0, min(allowance, len(calls)))
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
        return narrowed, refusals, n

    def _result(
        self, ran: dict[str, Any] | None, refusals: list[dict[str, Any]], n: int
    ) -> dict[str, Any]:
        messages = list((ran or {}).get(self.messages_key, []))
        messages += [ToolMessage(status="error", **r) for r in refusals]
        return {self.messages_key: messages, "spent": Spend(tool_calls=n).model_dump()}

    def _run(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        narrowed, refusals, n = self._split(state)
        ran = self.tool_node.invoke(narrowed, config) if n else None
        return self._result(ran, refusals, n)

    async def _arun(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        narrowed, refusals, n = self._split(state)
        ran = await self.tool_node.ainvoke(narrowed, config) if n else None
        return self._result(ran, refusals, n)
