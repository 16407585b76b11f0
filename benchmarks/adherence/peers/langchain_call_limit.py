"""LangChain's ``ModelCallLimitMiddleware``: a budget expressed as a count of model calls.

It counts calls, not tokens, so the budget becomes ``budget // max_tokens`` calls per thread,
the figure a user would pick. Workers are threads, each its own conversation (a thread id with
a checkpointer, where the middleware keeps a thread's count; each call clears the history, so
the requests are the other libraries'). A call the middleware ends the run before is a refused
call.
"""

from __future__ import annotations

import sys
import threading
import uuid
from importlib.metadata import version
from pathlib import Path

from langchain.agents import create_agent
from langchain.agents.middleware import ModelCallLimitMiddleware
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.message import REMOVE_ALL_MESSAGES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scenarios import PROMPT, Outcome, arguments, chat_settings, langchain_tools, report


def main() -> None:
    args = arguments()
    scenario = args.scenario
    chat = ChatOpenAI(**chat_settings(args.base_url), max_tokens=scenario.max_tokens)
    tools = langchain_tools(scenario)
    allowed = scenario.budget // scenario.max_tokens
    agent = create_agent(  # a thread's count lives in its checkpointed state
        model=chat,
        tools=tools,
        middleware=[ModelCallLimitMiddleware(thread_limit=allowed)],
        checkpointer=InMemorySaver(),
    )
    sent = refused = reported = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal sent, refused, reported
        config = {"configurable": {"thread_id": uuid.uuid4().hex}}
        for _ in range(scenario.calls):
            # A fresh history each call (the count stays in the thread's state): the same
            # requests as every other library's.
            fresh = [RemoveMessage(id=REMOVE_ALL_MESSAGES), HumanMessage(PROMPT)]
            final = agent.invoke({"messages": fresh}, config)
            last = final["messages"][-1]
            with lock:
                if isinstance(last, AIMessage) and last.usage_metadata:
                    sent += 1
                    reported += last.usage_metadata["total_tokens"]
                else:
                    refused += 1

    workers = [threading.Thread(target=worker) for _ in range(scenario.workers)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    report(
        Outcome(
            library=f"langchain {version('langchain')}",
            entry="ModelCallLimitMiddleware(thread_limit)",
            sent=sent,
            refused=refused,
            reported=reported,
            note=(
                "a count of calls per thread (budget // max_tokens: 3, 2 and 11 here), kept in "
                "the thread's checkpointed state; each call starts from a fresh history"
            ),
        )
    )


if __name__ == "__main__":
    main()
