"""A budgeted agent traced into a trace UI over OTLP, as the README's "Tracing" says to.

Run by ``test_phoenix.py`` in a process of its own (``configure`` sets the global providers):
``python phoenix_agent.py BASE_URL OTLP_ENDPOINT PROJECT THREAD``. Prints the agent's report.
"""

import json
import sys

from langchain_openai import ChatOpenAI
from openinference.instrumentation.openai import OpenAIInstrumentor
from roi_agents_langgraph import create_budgeted_agent

from roi_agents import Budget, Option
from roi_agents.telemetry import configure


def main() -> None:
    base_url, endpoint, project, thread = sys.argv[1:5]
    telemetry = configure("otlp", endpoint=endpoint, project=project, metrics_export=False)
    OpenAIInstrumentor().instrument()  # each call's own span, with its messages, under its decision
    chat = ChatOpenAI(
        base_url=base_url,
        api_key="unused",
        model="tiny",
        extra_body={"ignore_eos": True},  # a runaway: every call stops at its cap
        max_retries=0,
        timeout=120,
    )
    options = [
        Option(name="fast", model="tiny", max_tokens=16, input_price=1.0, output_price=4.0),
        Option(name="deep", model="tiny", max_tokens=96, input_price=1.0, output_price=4.0),
    ]
    agent = create_budgeted_agent(
        chat,
        budget=Budget(tokens=900),
        options=options,
        planner=lambda task: [f"part {i}: write a paragraph about {task}" for i in range(3)],
    )
    final = agent.invoke({"task": "tracing"}, {"configurable": {"thread_id": thread}})
    telemetry.shutdown()
    print(json.dumps(final["report"]))


if __name__ == "__main__":
    main()
