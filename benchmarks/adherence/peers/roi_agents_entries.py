"""roi-agents' entry points, each as its documentation (the README) shows it.

``--entry budgeted``: ``budgeted(chat, budget=...)`` shared by the workers (threads);
``middleware``: ``create_agent(..., middleware=[BudgetMiddleware(budget=...)])``, one thread;
``nodes``: a StateGraph with ``add_budget_loop``, one step per call; ``agent``:
``create_budgeted_agent`` with a fixed plan, its runs spending from one ledger scope. Without
``count_prompt``'s exact counter: the byte bound, as a newcomer's graph has it.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableLambda
from langchain_openai import ChatOpenAI
from langgraph.graph import StateGraph
from roi_agents_langgraph import (
    BudgetControllerNode,
    BudgetMiddleware,
    BudgetState,
    MetaCognitiveNode,
    add_budget_loop,
    budgeted,
    create_budgeted_agent,
    current_step,
)

from roi_agents import Budget, BudgetExceeded, Controller, Option, PriorPredictor, Step
from roi_agents.ledger import MemoryLedger, ScopeBudget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scenarios import (
    MODEL,
    PROMPT,
    Outcome,
    Scenario,
    arguments,
    chat_settings,
    in_threads,
    langchain_tools,
    report,
    run_calls,
)


def _tokens(spent: dict) -> int:
    """Tokens of a state's or a report's ``spent`` (empty when nothing ran)."""
    return int(spent.get("input_tokens", 0) + spent.get("output_tokens", 0))


def _summed(scenario: Scenario, work: Callable[[], tuple[int, int, int]]) -> tuple[int, ...]:
    """``work`` in each of the scenario's threads: the sums of (sent, refused, tokens)."""
    return tuple(sum(column) for column in zip(*in_threads(scenario.workers, work), strict=True))


def main() -> None:
    args = arguments()
    scenario: Scenario = args.scenario
    chat = ChatOpenAI(**chat_settings(args.base_url))
    tools = langchain_tools(scenario)
    option = Option(name="call", model=MODEL, max_tokens=scenario.max_tokens)
    budget = Budget(tokens=scenario.budget)
    entry = args.entry

    if entry == "budgeted":
        wrapped = budgeted(chat.bind_tools(tools) if tools else chat, budget=budget, option=option)
        sent, refused = run_calls(scenario, lambda: wrapped.invoke(PROMPT), BudgetExceeded)
        reported = wrapped.spent.tokens
    elif entry == "middleware":
        guard = BudgetMiddleware(budget=budget, options=(option,), expected_calls=1)
        agent = create_agent(model=chat, tools=tools, middleware=[guard])
        thread = uuid.uuid4().hex
        config = {"configurable": {"thread_id": thread}}

        def work() -> None:
            for _ in range(scenario.calls):
                agent.invoke({"messages": [HumanMessage(PROMPT)]}, config)

        in_threads(scenario.workers, work)
        result = guard.sessions.get(guard.sessions.scope_of(thread), budget).report()
        sent, refused = result.calls, scenario.calls * scenario.workers - result.calls
        reported = result.committed.tokens
    elif entry == "nodes":
        ledger = MemoryLedger()
        ledger.set_budget(ScopeBudget(scope="team", tokens=scenario.budget))
        control = BudgetControllerNode(Controller(), ledger=ledger, scope="team")

        def execute(state: BudgetState) -> dict:
            step, decision = current_step(state)
            model = budgeted(
                chat.bind_tools(tools) if tools else chat, session=control.session(state)
            )
            try:
                model.invoke(
                    PROMPT, decision=decision, option=step.option(decision.option), step=step
                )
            except BudgetExceeded:
                return control.skip(state)
            return control.settle(state)

        graph = StateGraph(BudgetState)
        add_budget_loop(
            graph, MetaCognitiveNode(PriorPredictor()), control, RunnableLambda(execute)
        )
        compiled = graph.compile()

        def work() -> tuple[int, int, int]:
            steps = [
                Step(id=f"s{i}", text=PROMPT, options=(option,)) for i in range(scenario.calls)
            ]
            final = compiled.invoke(
                {"budget": budget.model_dump(), "pending": [s.model_dump() for s in steps]},
                {"configurable": {"thread_id": uuid.uuid4().hex}, "recursion_limit": 200},
            )
            ran = control.session(final).report().calls  # a step refused at its call ran none
            return ran, len(steps) - ran, _tokens(final.get("spent") or {})

        sent, refused, reported = _summed(scenario, work)
    elif entry == "agent":
        ledger = MemoryLedger()
        ledger.set_budget(ScopeBudget(scope="team", tokens=scenario.budget))
        agent = create_budgeted_agent(
            chat,
            tools,
            budget=budget,
            options=(option,),
            planner=lambda task: [PROMPT] * scenario.calls,
            ledger=ledger,
            scope="team",
        )

        def work() -> tuple[int, int, int]:
            final = agent.invoke({"task": PROMPT}, {"recursion_limit": 200})
            result = final["report"]
            ran = result["steps"] - result["skipped"]
            return ran, result["skipped"], _tokens(result["spent"])

        sent, refused, reported = _summed(scenario, work)
    else:
        raise SystemExit(f"unknown entry {entry!r}: budgeted, middleware, nodes or agent")
    report(
        Outcome(
            library=f"roi-agents {version('roi-agents')}",
            entry=entry,
            sent=sent,
            refused=refused,
            reported=int(reported),
        )
    )


if __name__ == "__main__":
    main()
