"""A tool-using agent with a tool-call budget beside its token budget.

    .venv/bin/python examples/tool_agent.py --base-url http://127.0.0.1:8000/v1 --model MODEL

Tool calls beyond the allowance are refused with a ToolMessage that says so (the model sees it
and the graph goes on); nothing runs unpaid. Each request's prompt, tool schemas included, is
counted by the server itself (vLLM's /tokenize; another server falls back to the byte bound,
which is several times higher with tools). Prints the decisions and the budget report.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from roi_agents_langgraph import create_budgeted_agent

from roi_agents import Budget, VLLMTokenCounter

CALLS: list[str] = []


@tool
def search(query: str) -> str:
    """Search the team's notes."""
    CALLS.append(query)
    return f"3 notes mention {query!r}"


@tool
def calculator(expression: str) -> str:
    """Evaluate a sum of integers like '2+3+4'."""
    CALLS.append(expression)
    return str(sum(int(part) for part in expression.split("+")))


def main(
    base_url: str, model: str, tokens: int, tool_calls: int, **model_kwargs: Any
) -> dict[str, Any]:
    chat = ChatOpenAI(
        base_url=base_url, api_key="unused", model=model, max_retries=0, timeout=120, **model_kwargs
    )
    agent = create_budgeted_agent(
        chat,
        [search, calculator],
        budget=Budget(tokens=tokens, tool_calls=tool_calls),
        max_steps=4,
        planning_tokens=128,
        counter=VLLMTokenCounter(base_url, model),
    )
    final = agent.invoke(
        {"task": "How many notes mention pricing, and what is 12+30?"}, {"recursion_limit": 200}
    )
    report: dict[str, Any] = final["report"]
    for d in report["decisions"]:
        print(f"{d['step']:>7}  {d['option']:<6} {d['reason']}")
    spent = report["spent"]
    print(
        f"spent {spent['input_tokens'] + spent['output_tokens']} of {tokens} tokens and "
        f"{spent['tool_calls']} of {tool_calls} tool calls"
    )
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--tool-calls", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(main(args.base_url, args.model, args.tokens, args.tool_calls)["spent"]))
