"""The scenarios every library runs, as plain data (each runner imports this file by path).

Standard library only: the peers' runners run in virtualenvs of their own.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

T = TypeVar("T")

MODEL = "tiny"
PROMPT = "go on thinking about the plan"


@dataclass(frozen=True)
class Scenario:
    """One way of spending a budget.

    Attributes:
        budget: tokens (prompt and output, as the server counts them) for the whole scenario.
        calls: calls each worker tries to make.
        max_tokens: each call's ``max_tokens`` (the model never stops before it).
        workers: threads or tasks sharing the one budget.
        tools: the four tool schemas ride in every request.
    """

    budget: int
    calls: int
    max_tokens: int
    workers: int = 1
    tools: bool = False


SCENARIOS = {
    "runaway": Scenario(budget=1000, calls=10, max_tokens=256),
    "tools": Scenario(budget=600, calls=10, max_tokens=256, tools=True),
    "concurrency": Scenario(budget=1500, calls=3, max_tokens=128, workers=8),
}

# The four tools of `tests/live.py` (name, description, parameters): each runner declares them
# the way its library does.
TOOLS = [
    ("search", "Search the web for pages about the query and return their titles and first lines."),
    ("calculator", "Evaluate an arithmetic expression with + - * / and parentheses, exactly."),
    ("weather", "The weather forecast for a city over the next days, with temperatures and rain."),
    ("send_email", "Send an email to one address with a subject and a plain-text body."),
]


USD_PER_TOKEN = 1e-6
"""The list price given to "tiny" where a library budgets dollars: $1 per million tokens, input
and output alike, so dollars and tokens convert exactly."""


def openai_tools() -> list[dict[str, Any]]:
    """`TOOLS` as OpenAI function schemas, each with one string parameter."""
    return [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": text,
                "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
            },
        }
        for name, text in TOOLS
    ]


def openai_request(scenario: Scenario) -> dict[str, Any]:
    """One call of the scenario, as ``client.chat.completions.create(**request)`` takes it."""
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": scenario.max_tokens,
        "extra_body": {"ignore_eos": True},  # the model never stops before max_tokens
    }
    if scenario.tools:
        request["tools"] = openai_tools()
    return request


def chat_settings(base_url: str) -> dict[str, Any]:
    """Keyword arguments of LangChain's ``ChatOpenAI`` for the scenario's model."""
    return {
        "base_url": base_url,
        "api_key": "-",
        "model": MODEL,
        "extra_body": {"ignore_eos": True},  # the model never stops before max_tokens
        "max_retries": 0,
        "timeout": 120,
    }


def langchain_tools(scenario: Scenario) -> list[Any]:
    """`TOOLS` as LangChain tools (none where the scenario has none); needs langchain-core."""
    from langchain_core.tools import StructuredTool

    if not scenario.tools:
        return []
    return [
        StructuredTool.from_function(lambda text: "no results", name=name, description=text)
        for name, text in TOOLS
    ]


def in_threads(n: int, work: Callable[[], T]) -> list[T]:
    """Run ``work`` in ``n`` threads at once; their results. A thread's error is raised here."""
    results: list[T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def target() -> None:
        try:
            got = work()
        except BaseException as error:  # raised in the calling thread below
            errors.append(error)
            return
        with lock:
            results.append(got)

    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def run_calls(
    scenario: Scenario,
    call: Callable[[], object],
    refusal: type[BaseException] | tuple[type[BaseException], ...],
) -> tuple[int, int]:
    """Each worker (a thread) makes the scenario's calls: (calls made, calls refused).

    ``call`` raising ``refusal`` is a call the library refused; any other error is raised.
    """

    def work() -> tuple[int, int]:
        sent = refused = 0
        for _ in range(scenario.calls):
            try:
                call()
            except refusal:
                refused += 1
            else:
                sent += 1
        return sent, refused

    results = in_threads(scenario.workers, work)
    return sum(s for s, _ in results), sum(r for _, r in results)


@dataclass
class Outcome:
    """What one runner saw: the harness adds the server's own count.

    Attributes:
        library: the library and version, e.g. ``pydantic-ai 1.2.3``.
        entry: the way it was used (an entry point, a class).
        sent: calls the library let through to the server.
        refused: calls it stopped before they were sent.
        reported: the tokens it says were spent (``None``: it does not say).
        note: how the scenario was expressed with it, or why it could not be.
    """

    library: str
    entry: str
    sent: int
    refused: int
    reported: int | None
    note: str = ""


def arguments() -> argparse.Namespace:
    """``--base-url URL --scenario NAME [--entry E]``; ``scenario`` is the `Scenario`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    parser.add_argument("--entry", default="", help="which of the library's ways to use")
    args = parser.parse_args()
    args.name, args.scenario = args.scenario, SCENARIOS[args.scenario]
    return args


def report(outcome: Outcome) -> None:
    """Print the outcome as the runner's last line (JSON), which the harness reads."""
    print(json.dumps(asdict(outcome)), flush=True)
