"""A multi-step research assistant with an effort level per step, under a token budget.

Run against any OpenAI-compatible server (a vLLM server, for one):

    .venv/bin/python examples/research_assistant.py --base-url http://127.0.0.1:8000/v1 \\
        --model MODEL --tokens 4000

The agent plans the research into steps, forecasts each effort level (quick, standard, thorough)
per step, gives each step the level the budget can pay for, and prints every decision and the
budget report.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from langchain_openai import ChatOpenAI
from roi_agents_langgraph import create_budgeted_agent

from roi_agents import Budget, Option

EFFORT = (
    Option(name="quick", max_tokens=64, tags=("fast",)),
    Option(name="standard", max_tokens=256, tags=("standard",)),
    Option(name="thorough", max_tokens=1024, tags=("deep",)),
)
STEPS = [
    "List what is known about the question",
    "Find three independent sources",
    "Compare what the sources say",
    "Note the open disagreements",
    "Draft a five-sentence answer",
]


def main(base_url: str, model: str, tokens: int, **model_kwargs: Any) -> dict[str, Any]:
    chat = ChatOpenAI(
        base_url=base_url, api_key="unused", model=model, max_retries=0, timeout=120, **model_kwargs
    )
    agent = create_budgeted_agent(
        chat, budget=Budget(tokens=tokens), options=EFFORT, planner=lambda task: STEPS
    )
    final = agent.invoke(
        {"task": "Is a four-day week good for productivity?"}, {"recursion_limit": 200}
    )
    report: dict[str, Any] = final["report"]
    for d in report["decisions"]:
        print(f"{d['step']:>7}  {d['option']:<9} {d['reason']}")
    spent = report["spent"]["input_tokens"] + report["spent"]["output_tokens"]
    print(
        f"spent {spent} of {tokens} tokens; {report['skipped']} of {report['steps']} steps skipped"
    )
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", type=int, default=4000)
    args = parser.parse_args()
    print(json.dumps(main(args.base_url, args.model, args.tokens)["spent"]))
