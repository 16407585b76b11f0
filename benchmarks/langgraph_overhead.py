"""Overhead of the planning nodes per agent step, excluding the model call.

Run: ``.venv/bin/python benchmarks/langgraph_overhead.py [--repeat N]``. Times, with the prior
predictor, (a) MetaCognitiveNode + BudgetControllerNode on a state with 10 pending steps of 3
options, and (b) a whole graph turn (forecast, control, route, an executor that settles a fixed
spend without calling a model) as LangGraph runs it. p50 and p99 in milliseconds, in this run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from langgraph.graph import StateGraph
from roi_agents_langgraph import (
    BudgetControllerNode,
    BudgetState,
    MetaCognitiveNode,
    add_budget_loop,
    current_step,
)

from roi_agents import Budget, Controller, Option, PriorPredictor, Spend, Step

OPTIONS = (
    Option(name="quick", max_tokens=64),
    Option(name="standard", max_tokens=256),
    Option(name="thorough", max_tokens=1024),
)


def _state(n: int) -> dict:
    steps = [Step(id=f"s{i}", text=f"step {i}", options=OPTIONS) for i in range(n)]
    return {"budget": Budget(tokens=10**6).model_dump(), "pending": [s.model_dump() for s in steps]}


def nodes(repeat: int) -> np.ndarray:
    forecast, control = MetaCognitiveNode(PriorPredictor()), BudgetControllerNode(Controller())
    state = _state(10)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        update = forecast.invoke(state)
        control.invoke({**state, **update}, {"configurable": {}})
        times.append(time.perf_counter() - started)
    return np.array(times[repeat // 10 :]) * 1e3


def graph_turns(runs: int) -> np.ndarray:
    control = BudgetControllerNode(Controller())

    def execute(state: BudgetState) -> dict:
        step, _ = current_step(state)
        return control.settle(state, Spend(input_tokens=20, output_tokens=100), call_id=step.id)

    graph = StateGraph(BudgetState)
    add_budget_loop(graph, MetaCognitiveNode(PriorPredictor()), control, execute)
    compiled = graph.compile()
    per_step = []
    for _ in range(runs):
        started = time.perf_counter()
        compiled.invoke(_state(10), {"recursion_limit": 100})
        per_step.append((time.perf_counter() - started) / 10)
    return np.array(per_step[runs // 10 :]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    a = nodes(args.repeat)
    b = graph_turns(max(args.repeat // 20, 20))
    print(
        f"forecast + control nodes, 10 pending x 3 options: p50 {np.percentile(a, 50):.2f} ms,"
        f" p99 {np.percentile(a, 99):.2f} ms"
    )
    print(
        f"whole graph turn without the model call:        p50 {np.percentile(b, 50):.2f} ms,"
        f" p99 {np.percentile(b, 99):.2f} ms"
    )


if __name__ == "__main__":
    main()
