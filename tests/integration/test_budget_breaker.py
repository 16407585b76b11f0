"""The budget breaker: every entry point against the runaway model, judged by the server's count.

Ground truth is vLLM's own ``/metrics`` token counters, read before and after each scenario. In
every case the server-counted spend is at most the budget, and the spend each entry point
reports equals the server's count. The tiny model's chat template renders tool schemas and
tool-call arguments into the prompt, as real tool-calling models' templates do.
"""

import asyncio
import contextlib
import threading
import uuid

import httpx
import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langgraph.types import RetryPolicy
from live import four_tools, runaway_chat, served
from roi_agents_langgraph import (
    BudgetMiddleware,
    budgeted,
    count_prompt,
    create_budgeted_agent,
)

from roi_agents import Budget, BudgetExceeded, Option, VLLMTokenCounter, price

pytestmark = pytest.mark.integration


class Served:
    """The server's token count over a block."""

    def __init__(self, server):
        self.server = server

    def __enter__(self):
        self.before = served(self.server)
        return self

    def __exit__(self, *exc):
        self.tokens = served(self.server) - self.before


TOOLS = four_tools()
CALL = Option(name="call", max_tokens=256)


def _runaway_calls(chat, n=10):
    sent = 0
    for _ in range(n):
        try:
            chat.invoke("go on thinking about the plan")
            sent += 1
        except BudgetExceeded:
            pass
    return sent


def test_budgeted_runaway_of_ten_calls(tiny_chat_server):
    chat = budgeted(runaway_chat(tiny_chat_server), budget=Budget(tokens=1000), option=CALL)
    with Served(tiny_chat_server) as server:
        sent = _runaway_calls(chat)
    assert 3 <= sent < 10
    assert server.tokens <= 1000
    assert chat.spent.tokens == server.tokens


@pytest.mark.parametrize("exact", [False, True])
def test_tool_schemas_are_counted_before_the_call(tiny_chat_server, exact):
    model = runaway_chat(tiny_chat_server).bind_tools(TOOLS)
    counter = VLLMTokenCounter(tiny_chat_server.base_url, "tiny") if exact else None
    chat = budgeted(model, budget=Budget(tokens=600), counter=counter, option=CALL)
    prompt = count_prompt(counter, [HumanMessage("go on")], TOOLS)
    with Served(tiny_chat_server) as server:
        sent = _runaway_calls(chat, 4)
    assert server.tokens <= 600
    assert chat.spent.tokens == server.tokens
    if prompt.tokens >= 600:
        assert sent == 0  # the schemas alone do not fit: nothing is sent
    if exact:
        assert prompt.counted_by == "vllm"
        # The server's own count of the prompt, tools included, before any call.
        assert prompt.tokens > count_prompt(counter, [HumanMessage("go on")]).tokens + 100


def test_the_exact_count_is_what_the_server_charges(tiny_chat_server):
    counter = VLLMTokenCounter(tiny_chat_server.base_url, "tiny")
    model = runaway_chat(tiny_chat_server).bind_tools(TOOLS)
    chat = budgeted(model, budget=Budget(tokens=5000), counter=counter, option=CALL)
    messages = [HumanMessage("plan a trip to the sea")]
    prompt = count_prompt(counter, messages, TOOLS)
    reply = chat.invoke(messages)
    assert reply.usage_metadata["input_tokens"] == prompt.tokens
    bound = count_prompt(None, messages, TOOLS)
    assert bound.tokens >= prompt.tokens  # the byte bound is an upper bound


@pytest.mark.parametrize("callers", ["threads", "tasks"])
def test_eight_callers_share_one_budgeted_model(tiny_chat_server, callers):
    option = Option(name="call", max_tokens=128)
    budget = Budget(tokens=1500)

    def in_threads():
        chat = budgeted(runaway_chat(tiny_chat_server), budget=budget, option=option)

        def worker():
            _runaway_calls(chat, 3)

        workers = [threading.Thread(target=worker) for _ in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return chat

    async def in_tasks():
        client = httpx.AsyncClient(timeout=120)
        model = runaway_chat(tiny_chat_server, async_client=client)
        chat = budgeted(model, budget=budget, option=option)

        async def worker():
            for _ in range(3):
                with contextlib.suppress(BudgetExceeded):
                    await chat.ainvoke("go on thinking about the plan")

        try:
            await asyncio.gather(*(worker() for _ in range(8)))
        finally:
            await client.aclose()
        return chat

    with Served(tiny_chat_server) as server:
        chat = in_threads() if callers == "threads" else asyncio.run(in_tasks())
    assert server.tokens <= 1500
    assert chat.spent.tokens == server.tokens
    assert server.tokens > 1500 - 200  # shared, not refused wholesale


def _middleware_agent(server, tokens, **kwargs):
    middleware = BudgetMiddleware(
        budget=Budget(tokens=tokens), options=(CALL,), expected_calls=1, **kwargs
    )
    agent = create_agent(model=runaway_chat(server), tools=TOOLS, middleware=[middleware])
    return agent, middleware


def test_middleware_with_four_tools_holds_its_budget(tiny_chat_server):
    agent, _ = _middleware_agent(tiny_chat_server, 300)
    with Served(tiny_chat_server) as server:
        result = agent.invoke({"messages": [HumanMessage("plan a trip")]})
    assert server.tokens <= 300
    assert result["messages"][-1].content.startswith("Stopped")
    assert result["roi_spent"]["input_tokens"] + result["roi_spent"]["output_tokens"] == (
        server.tokens
    )


def test_middleware_error_names_what_was_left(tiny_chat_server):
    agent, _ = _middleware_agent(tiny_chat_server, 300, on_exhausted="error")
    with pytest.raises(BudgetExceeded) as info:
        agent.invoke({"messages": [HumanMessage("plan a trip")]})
    assert info.value.limit == 300  # what was really left, not 0
    assert info.value.requested > 300


def test_middleware_invokes_on_one_thread_share_its_budget(tiny_chat_server):
    middleware = BudgetMiddleware(
        budget=Budget(tokens=1200), options=(Option(name="c", max_tokens=128),), expected_calls=1
    )
    agent = create_agent(model=runaway_chat(tiny_chat_server), middleware=[middleware])
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}

    def one():
        agent.invoke({"messages": [HumanMessage("plan a trip")]}, config)

    with Served(tiny_chat_server) as server:
        workers = [threading.Thread(target=one) for _ in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    scope = f"thread/{config['configurable']['thread_id']}"
    assert server.tokens <= 1200
    assert middleware.ledger.balance(scope).committed.tokens == server.tokens


def test_agent_planning_call_is_under_the_budget(tiny_chat_server):
    agent = create_budgeted_agent(
        runaway_chat(tiny_chat_server), budget=Budget(tokens=100), max_steps=3
    )
    with Served(tiny_chat_server) as server:
        final = agent.invoke({"task": "compare three vendors"}, {"recursion_limit": 100})
    report = final["report"]
    assert server.tokens <= 100
    assert report["spent"]["input_tokens"] + report["spent"]["output_tokens"] == server.tokens
    assert not report["overrun"]


def test_agent_with_a_usd_budget_charges_usd(tiny_chat_server):
    cheap = Option(name="fast", max_tokens=64, input_price=200.0, output_price=800.0)
    dear = Option(name="deep", max_tokens=256, input_price=200.0, output_price=800.0)
    agent = create_budgeted_agent(
        runaway_chat(tiny_chat_server),
        budget=Budget(usd=0.2),
        options=(cheap, dear),
        planner=lambda task: [f"part {i}: a paragraph" for i in range(10)],
    )
    with Served(tiny_chat_server) as server:
        final = agent.invoke({"task": "ten parts"}, {"recursion_limit": 200})
    report = final["report"]
    ran = [r for r in final["results"] if "answer" in r]
    assert ran
    served_usd = sum(r["usd"] for r in ran)
    assert report["spent"]["usd"] == pytest.approx(served_usd)
    assert served_usd <= 0.2 + 1e-9
    assert report["spent"]["input_tokens"] + report["spent"]["output_tokens"] == server.tokens
    # Every call is priced at the same rates: the server's tokens bound its USD from above.
    assert served_usd <= price(dear, 0, server.tokens).usd


def test_a_retried_step_is_charged_for_every_attempt(tiny_chat_server):
    """A step that fails after its call and is retried: both attempts were served."""
    attempts = []

    def grade(step, answer):
        attempts.append(step.id)
        if len(attempts) == 1:
            raise ConnectionError("the grader's network blipped after the call")
        return 1.0

    agent = create_budgeted_agent(
        runaway_chat(tiny_chat_server),
        budget=Budget(tokens=2000),
        options=(Option(name="fast", max_tokens=64),),  # room for both attempts
        planner=lambda task: ["one step"],
        grade=grade,
        retry_policy=RetryPolicy(max_attempts=2, initial_interval=0.01, retry_on=ConnectionError),
    )
    with Served(tiny_chat_server) as server:
        final = agent.invoke({"task": "one step"}, {"recursion_limit": 50})
    report = final["report"]
    assert len(attempts) == 2
    assert report["calls"] == 2
    assert report["spent"]["input_tokens"] + report["spent"]["output_tokens"] == server.tokens
    assert server.tokens <= 2000


@pytest.mark.parametrize("answer", [b"not json", b'{"count": -3}', b'{"count": "12"}', None])
def test_a_counter_whose_server_answers_garbage_or_is_gone_falls_back_to_the_bound(answer):
    import http.server
    import socket

    class Garbage(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    if answer is None:  # nothing listens on the port
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = None
    else:
        server = http.server.HTTPServer(("127.0.0.1", 0), Garbage)
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        counter = VLLMTokenCounter(f"http://127.0.0.1:{port}/v1", "tiny", timeout=5)
        messages = [{"role": "user", "content": "hello"}]
        count = counter.count(messages)
        acount = asyncio.run(counter.acount(messages))
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    assert count == acount
    assert (count.counted_by, count.exact) == ("bound", False)
    assert count.tokens == 16 + 16 + 5


# Found by trying it as an attacker would: each of these overspent or wedged a thread before.


def test_the_agent_input_cannot_raise_its_fixed_budget(tiny_chat_server):
    from roi_agents import Step

    agent = create_budgeted_agent(runaway_chat(tiny_chat_server), budget=Budget(tokens=300))
    big = Option(name="big", max_tokens=1500)
    injected = [Step(id=f"x{i}", text="write", options=(big,)).model_dump() for i in range(2)]
    with Served(tiny_chat_server) as server:
        final = agent.invoke(
            {"task": "t", "budget": Budget(tokens=100_000).model_dump(), "pending": injected},
            {"recursion_limit": 50},
        )
    assert final["report"]["budget"] == {"tokens": 300}
    assert server.tokens <= 300


def test_the_middleware_scope_cannot_be_moved_by_the_input(tiny_chat_server):
    middleware = BudgetMiddleware(budget=Budget(tokens=400), options=(CALL,), expected_calls=1)
    agent = create_agent(model=runaway_chat(tiny_chat_server), middleware=[middleware])
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    with Served(tiny_chat_server) as server:
        for k in range(4):
            agent.invoke({"messages": [HumanMessage("hi")], "roi_scope": f"evil{k}"}, config)
    scope = middleware.sessions.scope_of(config["configurable"]["thread_id"])
    assert server.tokens <= 400
    assert middleware.ledger.balance(scope).committed.tokens == server.tokens


@pytest.mark.parametrize(
    "kwargs", [{"max_tokens": 1500}, {"max_completion_tokens": 1500}, {"n": 4}]
)
def test_call_settings_that_would_spend_past_the_hold_are_refused(tiny_chat_server, kwargs):
    from roi_agents import InvalidValueError

    chat = budgeted(runaway_chat(tiny_chat_server), budget=Budget(tokens=300))
    with Served(tiny_chat_server) as server, pytest.raises(InvalidValueError):
        chat.invoke("hello", **kwargs)
    assert server.tokens == 0
    with pytest.raises(InvalidValueError, match="n=3"):
        budgeted(runaway_chat(tiny_chat_server).bind(n=3), budget=Budget(tokens=300))


def test_a_request_the_server_refuses_costs_nothing(tiny_chat_server):
    import openai

    # 3,000 tokens leave room for max_tokens beyond the model's 2,048 context: vLLM says 400.
    chat = budgeted(runaway_chat(tiny_chat_server), budget=Budget(tokens=3000))
    with Served(tiny_chat_server) as server, pytest.raises(openai.BadRequestError):
        chat.invoke("hello")
    assert server.tokens == 0
    report = chat.session.report()
    assert (report.spent.tokens, report.committed.tokens, report.reserved.tokens) == (0, 0, 0)


def test_the_planner_is_charged_in_usd(tiny_chat_server):
    priced = Option(name="fast", max_tokens=64, input_price=1.0, output_price=4.0)
    agent = create_budgeted_agent(
        runaway_chat(tiny_chat_server), budget=Budget(usd=0.002), options=(priced,), max_steps=3
    )
    with Served(tiny_chat_server) as server:
        final = agent.invoke({"task": "compare three vendors"}, {"recursion_limit": 100})
    report = final["report"]
    steps_usd = sum(r.get("usd", 0.0) for r in final["results"])
    assert report["spent"]["usd"] > steps_usd  # the planning call is priced too
    assert report["spent"]["usd"] <= 0.002 + 1e-12
    assert report["spent"]["input_tokens"] + report["spent"]["output_tokens"] == server.tokens
    # Every call is priced at most at 4 $/M: the server's tokens bound the USD charged.
    assert report["spent"]["usd"] <= server.tokens * 4.0 / 1e6 + 1e-12
