"""A prebuilt plan-and-execute agent that plans, forecasts, allocates, executes and re-plans.

It also shows how the pieces compose: a planner node writes the steps, `MetaCognitiveNode`
forecasts them, `BudgetControllerNode` decides the next one, `route_budget` sends it to the
executor (a `budgeted` chat model, and a `BudgetedToolNode` for the tool calls it asks for) or
skips it, and the loop goes on until the steps are done or the budget is; then a report.
"""

from __future__ import annotations

import operator
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph

from roi_agents.allocate import Controller
from roi_agents.errors import BudgetExceeded
from roi_agents.ledger.base import Ledger
from roi_agents.predict.base import Learner, Predictor
from roi_agents.predict.prior import PriorPredictor
from roi_agents.types import Budget, Cap, Decision, Option, Spend, Step
from roi_agents_langgraph.chat import budgeted, prompt_token_bound, stopped_at_cap
from roi_agents_langgraph.nodes import BudgetControllerNode, MetaCognitiveNode, add_budget_loop
from roi_agents_langgraph.state import BudgetState, current_step, remaining
from roi_agents_langgraph.tools import BudgetedToolNode

__all__ = ["DEFAULT_OPTIONS", "DEFAULT_TOOL_OPTIONS", "AgentState", "create_budgeted_agent"]

DEFAULT_OPTIONS = (
    Option(name="fast", max_tokens=256, tags=("fast",)),
    Option(name="deep", max_tokens=2048, tags=("deep",)),
)
"""Without tools: a short and a long answer."""
DEFAULT_TOOL_OPTIONS = (
    Option(name="fast", max_tokens=256, tool_calls=1, tags=("fast",)),
    Option(name="deep", max_tokens=2048, tool_calls=4, tags=("deep",)),
)
"""With tools: the same, allowed 1 and 4 tool calls."""
_PLAN_PROMPT = (
    "Split the task into at most {n} short steps, one per line, no commentary.\n\nTask: {task}"
)


class AgentState(BudgetState):
    """The prebuilt agent's state: the task, the messages, each step's result, the report."""

    task: str
    messages: Annotated[list[Any], add_messages]
    results: Annotated[list[dict[str, Any]], operator.add]
    report: dict[str, Any]


def _lines(text: str, limit: int) -> list[str]:
    lines = [re.sub(r"^\s*(?:[-*]|\d+[.)])\s*", "", line).strip() for line in text.splitlines()]
    return [line for line in lines if line][:limit]


def create_budgeted_agent(
    model: BaseChatModel,
    tools: Sequence[BaseTool] = (),
    *,
    budget: Budget,
    predictor: Predictor | None = None,
    options: Sequence[Option] | None = None,
    controller: Controller | None = None,
    planner: Callable[[str], list[str]] | None = None,
    max_steps: int = 8,
    planning_tokens: int = 256,
    ledger: Ledger | None = None,
    scope: str | None = None,
    checkpointer: BaseCheckpointSaver[Any] | None = None,
    grade: Callable[[Step, str], float | None] | None = None,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Build the agent. Invoke it with ``{"task": "..."}``; the budget is fixed here.

    Args:
        model: the chat model every step calls (an option's ``model`` overrides its name).
        tools: tools the model may call; their calls count against ``budget.tool_calls``.
        budget: the run's budget.
        predictor: forecasts per step and option (default: a `PriorPredictor`).
        options: the ways of doing a step (default: `DEFAULT_OPTIONS`, or
            `DEFAULT_TOOL_OPTIONS` when there are tools).
        controller: allocation settings (default: `Controller()`).
        planner: task -> step texts; default: ask the model for at most ``max_steps`` lines
            (under a cap of ``planning_tokens``, counted in the budget), or the task itself.
        max_steps: most steps the default planner keeps.
        planning_tokens: the default planner's token cap.
        ledger: a shared ledger to reserve and commit in, with ``scope``.
        scope: the ledger scope.
        checkpointer: any LangGraph checkpointer.
        grade: (step, answer) -> success in [0, 1], or None when unknown. Each graded step is
            told to the predictor when it learns (a `PriorPredictor`, a `GuardedPredictor`),
            an answer cut off at its cap as ``truncated``; the grade is in the step's result.

    Returns:
        A compiled graph whose final state holds ``results`` and a ``report``.
    """
    chat = budgeted(model.bind_tools(list(tools)) if tools else model)  # type: ignore[arg-type]
    forecaster = predictor or PriorPredictor()
    learner = forecaster if grade is not None and isinstance(forecaster, Learner) else None
    control = BudgetControllerNode(
        controller or Controller(), ledger=ledger, scope=scope, learner=learner
    )
    tool_node = BudgetedToolNode(tools) if tools else None
    option_list = tuple(options or (DEFAULT_TOOL_OPTIONS if tools else DEFAULT_OPTIONS))

    def plan(state: AgentState) -> dict[str, Any]:
        if state.get("pending"):
            return {}
        task = state["task"]
        update: dict[str, Any] = {"budget": budget.model_dump()}
        if planner is not None:
            texts = planner(task)
        else:
            texts = [task]
            decision = Decision(
                step_id="plan",
                option="plan",
                cap=Cap(tokens=planning_tokens),
                expected_value=0.0,
                expected_cost={},
                reason="planning",
            )
            try:
                reply = chat.invoke(
                    _PLAN_PROMPT.format(n=max_steps, task=task),
                    decision=decision,
                    option=Option(name="plan", max_tokens=planning_tokens),
                )
                texts = _lines(str(reply.content), max_steps) or [task]
                usage = reply.usage_metadata or {"input_tokens": 0, "output_tokens": 0}
                update["spent"] = Spend(
                    input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"]
                ).model_dump()
            except BudgetExceeded:
                pass  # no room to plan: the task is the one step
        steps = [
            Step(
                id=f"step-{i}",
                text=text,
                options=option_list,
                input_tokens=prompt_token_bound([HumanMessage(content=text)]),
            )
            for i, text in enumerate(texts)
        ]
        return {
            **update,
            "pending": [s.model_dump() for s in steps],
            "messages": [HumanMessage(content=task)],
        }

    def execute(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        current = current_step(state)
        assert current is not None
        step, decision = current
        try:
            reply = chat.invoke(
                [HumanMessage(content=step.text)],
                decision=decision,
                option=step.option(decision.option),
            )
        except BudgetExceeded as refused:
            skipped = control.skip(state)
            return {**skipped, "results": [{"step": step.id, "skipped": str(refused)}]}
        usage = reply.usage_metadata or {"input_tokens": 0, "output_tokens": 0}
        spend = Spend(input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"])
        messages: list[Any] = [reply]
        if tool_node is not None and isinstance(reply, AIMessage) and reply.tool_calls:
            ran = tool_node.invoke({**state, "messages": [reply]}, config)
            messages += ran["messages"]
            spend = spend + Spend.model_validate(ran["spent"])
        thread = (config.get("configurable") or {}).get("thread_id", uuid.uuid4().hex)
        answer = str(reply.content)
        success = grade(step, answer) if grade is not None else None
        settled = control.settle(
            state,
            spend,
            call_id=f"{thread}:{step.id}",
            success=success,
            truncated=stopped_at_cap(reply),
        )
        result = {
            "step": step.id,
            "option": decision.option,
            "answer": answer,
            "tokens": spend.tokens,
            "tool_calls": spend.tool_calls,
            "success": success,
        }
        return {**settled, "messages": messages, "results": [result]}

    def report(state: AgentState) -> dict[str, Any]:
        decisions = state.get("decisions") or []
        spent = Spend.model_validate(state.get("spent") or {})
        return {
            "report": {
                "budget": budget.model_dump(exclude_none=True),
                "spent": spent.model_dump(),
                "remaining": remaining(state).model_dump(exclude_none=True),
                "steps": len(decisions),
                "skipped": sum(d["option"] == "skip" for d in decisions),
                "decisions": [
                    {"step": d["step_id"], "option": d["option"], "reason": d["reason"]}
                    for d in decisions
                ],
            }
        }

    graph = StateGraph(AgentState)
    graph.add_node("plan", plan)
    graph.add_edge(START, "plan")
    add_budget_loop(
        graph,
        MetaCognitiveNode(forecaster),
        control,
        execute,
        start="plan",
        finish="report",
    )
    graph.add_node("report", report)
    graph.add_edge("report", END)
    return graph.compile(checkpointer=checkpointer)
