"""pydantic-ai's ``UsageLimits(total_tokens_limit=...)``, as its documentation shows it.

One agent on the OpenAI-compatible server; the scenario's runs share one ``RunUsage`` (the
documented way to carry a budget across runs), and every run gets the same ``UsageLimits``.
Workers are asyncio tasks. A ``UsageLimitExceeded`` raised before a request ("The next request
would exceed ...") is a refused call; the harness counts the calls sent at the server.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from pydantic_ai import Agent, UsageLimitExceeded
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.usage import RunUsage, UsageLimits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scenarios import MODEL, PROMPT, TOOLS, Outcome, arguments, report


def _tool(name: str, description: str):
    def tool(text: str) -> str:
        return "no results"

    tool.__name__, tool.__doc__ = name, description
    return tool


async def main() -> None:
    args = arguments()
    scenario = args.scenario
    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=args.base_url, api_key="-"))
    refused = 0
    tools = [_tool(name, text) for name, text in TOOLS] if scenario.tools else []
    agent = Agent(model, tools=tools)
    usage = RunUsage()
    limits = UsageLimits(total_tokens_limit=scenario.budget)
    settings = {"max_tokens": scenario.max_tokens, "extra_body": {"ignore_eos": True}}

    async def worker() -> None:
        nonlocal refused
        for _ in range(scenario.calls):
            try:
                await agent.run(PROMPT, usage=usage, usage_limits=limits, model_settings=settings)
            except UsageLimitExceeded as error:  # before a request, or after its reply
                refused += str(error).startswith("The next request")

    await asyncio.gather(*(worker() for _ in range(scenario.workers)))
    import pydantic_ai

    report(
        Outcome(
            library=f"pydantic-ai {pydantic_ai.__version__}",
            entry="UsageLimits(total_tokens_limit)",
            sent=usage.requests,
            refused=refused,
            reported=usage.total_tokens,
            note="checked against the usage so far, before each request and after each reply",
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
