"""A prebuilt plan-and-execute agent that plans, forecasts, allocates, executes and re-plans.

It also shows how the pieces compose: a planner node writes the steps, `MetaCognitiveNode`
forecasts them, `BudgetControllerNode` decides the next one, `route_budget` sends it to the
executor (a `budgeted` chat model, and a `BudgetedToolNode` for the tool calls it asks for) or
skips it, and the loop goes on until the steps are done or the budget is; then a report.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import RetryPolicy

from roi_agents.errors import BudgetExceeded
from roi_agents.ledger.base import Ledger
from roi_agents.predict.base import Learner, Predictor
from roi_agents.predict.composed import learning
from roi_agents.prompt import PromptCounter
from roi_agents.session import BudgetSession, OnExhausted, check_budget
from roi_agents.types import Budget, Cap, Decision, Option, Spend, Step
from roi_agents_langgraph.chat import BudgetedChatModel, budgeted, count_prompt, stopped_at_cap
from roi_agents_langgraph.middleware import DEFAULT_OPTIONS
from roi_agents_langgraph.nodes import BudgetControllerNode, MetaCognitiveNode, add_budget_loop
from roi_agents_langgraph.state import BudgetState, current_step
from roi_agents_langgraph.tools import BudgetedToolNode

if TYPE_CHECKING:
    from roi_agents.allocate import Controller

__all__ = ["DEFAULT_OPTIONS", "DEFAULT_TOOL_OPTIONS", "AgentState", "create_budgeted_agent"]

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
    scope: str = "agent",
    counter: PromptCounter | None = None,
    on_exhausted: OnExhausted = "degrade",
    checkpointer: BaseCheckpointSaver[Any] | None = None,
    grade: Callable[[Step, str], float | None] | None = None,
    retry_policy: RetryPolicy | None = None,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Build the agent. Invoke it with ``{"task": "..."}``; the budget is fixed here.

    Every call (the planner's included) is counted, reserved and charged in the run's ledger
    scope, ``{scope}/{thread_id}``, so the run never spends more than ``budget`` (nor than a
    shared ledger's ``scope`` allows), and the report's spend is what the server counted.

    Args:
        model: the chat model every step calls (an option's ``model`` overrides its name).
        tools: tools the model may call; their calls count against ``budget.tool_calls``.
        budget: the run's budget (tokens, USD at the options' prices, tool calls).
        predictor: forecasts per step and option (default: a `PriorPredictor`; a learned one
            that does not learn, such as a `VLLMPredictor`, is composed with one:
            `ComposedPredictor`).
        options: the ways of doing a step (default: `DEFAULT_OPTIONS`, or
            `DEFAULT_TOOL_OPTIONS` when there are tools).
        controller: allocation settings (default: a `Controller` with a `PriorPredictor`).
        planner: task -> step texts; default: ask the model for at most ``max_steps`` lines,
            under a cap of ``planning_tokens`` and at most a quarter of the budget (skipped,
            the task being the one step, when its prompt does not fit in that).
        max_steps: most steps the default planner keeps.
        planning_tokens: the default planner's output-token cap.
        ledger: a shared ledger to spend from (default: one in memory).
        scope: the scope above the runs' scopes (a tenant or user in a shared ledger).
        counter: the model's own prompt count (`roi_agents.VLLMTokenCounter`); default: the
            byte bound.
        on_exhausted: when no option of a step fits: ``"degrade"`` (skip it), ``"end"``,
            ``"ask"`` (needs a checkpointer) or ``"error"``.
        checkpointer: any LangGraph checkpointer.
        grade: (step, answer) -> success in [0, 1], or None when unknown. Each graded step is
            told to the predictor when it learns (a `PriorPredictor`, a `ComposedPredictor`),
            an answer cut off at its cap as ``truncated``; the grade is in the step's result.
        retry_policy: retries of a step that raised; every attempt's calls are charged.

    Returns:
        A compiled graph whose final state holds ``results`` and a ``report``: the budget,
        what was spent (as the server counted it), what is left (negative on an overrun, which
        ``overrun`` flags), the decisions, and a ``summary`` in words; when the budget ran out
        before a step, that summary is also the last message. The budget is the thread's:
        invocations on one thread id spend from it together, and the report's figures are the
        thread's so far.
    """
    check_budget(budget)
    bound = model.bind_tools(list(tools)) if tools else model
    forecaster = learning(predictor)
    learner = forecaster if grade is not None and isinstance(forecaster, Learner) else None
    control = BudgetControllerNode(
        controller,
        ledger=ledger,
        scope=scope,
        learner=learner,
        on_exhausted=on_exhausted,
    )
    tool_node = BudgetedToolNode(tools, control=control) if tools else None
    option_list = tuple(options or (DEFAULT_TOOL_OPTIONS if tools else DEFAULT_OPTIONS))

    def chat(session: BudgetSession) -> BudgetedChatModel:
        return budgeted(bound, session=session, counter=counter)

    # The planner runs on the agent's model; its price is the dearest option's, which never
    # under-charges a USD budget.
    plan_option = Option(
        name="plan",
        max_tokens=planning_tokens,
        input_price=max(o.input_price for o in option_list),
        output_price=max(o.output_price for o in option_list),
    )

    def plan(state: AgentState) -> dict[str, Any]:
        # The budget is the one fixed here, whatever the input says; the run's scope is its
        # thread's (a fresh one without a thread id), never one named in the input.
        fixed = budget.model_dump()
        session = control.session({"budget": fixed})
        update: dict[str, Any] = {"budget": fixed, "scope": session.scope}
        if state.get("pending"):
            return update
        task = state["task"]
        texts = [task]
        if planner is not None:
            texts = planner(task)
        else:
            left = session.remaining()
            share = Cap(
                tokens=None if left.tokens is None else left.tokens // 4,
                usd=None if left.usd is None else left.usd / 4,
            )
            decision = Decision(
                step_id="plan",
                option="plan",
                cap=share,
                expected_value=0.0,
                expected_cost={},
                reason="planning: at most a quarter of what is left",
            )
            try:
                reply = chat(session).invoke(
                    _PLAN_PROMPT.format(n=max_steps, task=task),
                    decision=decision,
                    option=plan_option,
                )
                texts = _lines(str(reply.content), max_steps) or [task]
            except BudgetExceeded:
                pass  # no room to plan: the task is the one step
            update["spent"] = session.spent_on("plan").model_dump()
        steps = [
            Step(
                id=f"step-{i}",
                text=text,
                options=option_list,
                # What the step's call will carry: its text and the tool schemas.
                input_tokens=count_prompt(counter, [HumanMessage(content=text)], tools).tokens,
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
            reply = chat(control.session(state)).invoke(
                [HumanMessage(content=step.text)],
                decision=decision,
                option=step.option(decision.option),
                step=step,
            )
        except BudgetExceeded as refused:
            skipped = control.skip(state)
            return {**skipped, "results": [{"step": step.id, "skipped": str(refused)}]}
        messages: list[Any] = [reply]
        if tool_node is not None and reply.tool_calls:
            ran = tool_node.invoke({**state, "messages": [reply]}, config)
            messages += ran["messages"]
        answer = str(reply.content)
        success = grade(step, answer) if grade is not None else None
        settled = control.settle(state, success=success, truncated=stopped_at_cap(reply))
        spend = Spend.model_validate(settled.get("spent") or {})
        result = {
            "step": step.id,
            "option": decision.option,
            "answer": answer,
            "tokens": spend.tokens,
            "usd": spend.usd,
            "tool_calls": spend.tool_calls,
            "success": success,
        }
        return {**settled, "messages": messages, "results": [result]}

    def report(state: AgentState) -> dict[str, Any]:
        decisions = state.get("decisions") or []
        account = control.session(state).report()
        summary = control.summary(state)
        # When the budget ended the run, the last message says so, for people.
        ran_out = any(d.get("exhausted") for d in decisions)
        return {
            "messages": [AIMessage(content=summary)] if ran_out else [],
            "report": {
                "summary": summary,
                "budget": account.budget.model_dump(exclude_none=True),
                "spent": account.spent.model_dump(),
                "remaining": {r: v for r, v in account.remaining.items() if v is not None},
                "overrun": account.overrun,
                "calls": account.calls,
                "failed_calls": account.failed,
                "steps": len(decisions),
                "skipped": sum(d["option"] == "skip" for d in decisions),
                "decisions": [
                    {"step": d["step_id"], "option": d["option"], "reason": d["reason"]}
                    for d in decisions
                ],
            },
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
        retry_policy=retry_policy,
    )
    graph.add_node("report", report)
    graph.add_edge("report", END)
    return graph.compile(checkpointer=checkpointer)
