"""BudgetMiddleware in langchain's create_agent, against the real vLLM server (runaway model)."""

import math
import re

import httpx
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from live import runaway_chat
from roi_agents_langgraph import BudgetMiddleware

from roi_agents import Budget, BudgetExceeded, Option, PriorPredictor, Spend, Step

pytestmark = pytest.mark.integration

DEEP = Option(name="deep", max_tokens=300)
FAST = Option(name="fast", max_tokens=40)


def _prior():
    prior = PriorPredictor(group_by=False)
    step = Step(id="warm", options=(DEEP, FAST))
    for k in range(20):
        prior.observe(step, "deep", Spend(input_tokens=30, output_tokens=250), success=k < 18)
        prior.observe(step, "fast", Spend(input_tokens=30, output_tokens=40), success=k < 10)
    return prior


def _agent(server, tokens, **kwargs):
    model = runaway_chat(server)
    middleware = BudgetMiddleware(
        budget=Budget(tokens=tokens),
        options=(DEEP, FAST),
        predictor=_prior(),
        expected_calls=1,
        **kwargs,
    )
    return create_agent(model=model, tools=[], middleware=[middleware])


def _answer(result):
    return next(m for m in reversed(result["messages"]) if isinstance(m, AIMessage))


def test_rich_budget_gets_the_deep_option_and_is_accounted(tiny_chat_server):
    result = _agent(tiny_chat_server, 2000).invoke({"messages": [HumanMessage("plan a trip")]})
    answer = _answer(result)
    usage = answer.usage_metadata
    assert 40 < usage["output_tokens"] <= 300  # deep's ceiling, and the runaway stopped there
    spent = result["roi_spent"]
    assert (spent["input_tokens"], spent["output_tokens"]) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )


def test_tight_budget_degrades_to_the_cheap_option(tiny_chat_server):
    result = _agent(tiny_chat_server, 200).invoke({"messages": [HumanMessage("plan a trip")]})
    usage = _answer(result).usage_metadata
    assert usage["output_tokens"] <= 40
    assert usage["input_tokens"] + usage["output_tokens"] <= 200


def test_no_budget_ends_without_calling_the_model(tiny_chat_server):
    result = _agent(tiny_chat_server, 20).invoke({"messages": [HumanMessage("plan a trip")]})
    answer = _answer(result)
    # Said for people: what was spent, what the next answer needs, what is missing.
    said = re.fullmatch(
        r"Stopped\. Spent 0 of 20 tokens in 0 calls\. The budget ran out before the next answer: "
        r"it needs about (\d+) tokens, 20 are left \(add at least (\d+) tokens to run it\)\.",
        answer.content,
    )
    assert said, answer.content
    needs, missing = map(int, said.groups())
    assert needs > 20
    assert missing == needs - 20
    assert answer.usage_metadata is None
    assert Spend.model_validate(result["roi_spent"]) == Spend()
    with pytest.raises(BudgetExceeded) as refused:
        _agent(tiny_chat_server, 20, on_exhausted="error").invoke(
            {"messages": [HumanMessage("plan a trip")]}
        )
    assert (refused.value.limit, math.ceil(refused.value.requested)) == (20, needs)


def test_a_call_cut_off_at_its_cap_is_not_learned_as_the_cost(tiny_chat_server):
    deep = DEEP.model_copy(update={"model": "tiny"})
    prior = PriorPredictor(group_by=False)
    step = Step(id="q", options=(deep,))
    untaught = prior.predict([step])
    middleware = BudgetMiddleware(
        budget=Budget(tokens=2000), options=(deep,), predictor=prior, expected_calls=1
    )
    agent = create_agent(model=runaway_chat(tiny_chat_server), tools=[], middleware=[middleware])
    result = agent.invoke({"messages": [HumanMessage("plan a trip")]})
    answer = _answer(result)
    assert answer.response_metadata["finish_reason"] == "length"
    assert answer.response_metadata["model_name"] == "tiny"
    assert result["roi_spent"]["output_tokens"] == answer.usage_metadata["output_tokens"] > 0
    assert prior.predict([step]) == untaught  # charged, but not learned from


def test_each_call_is_a_decision_span_with_its_real_usage(tiny_chat_server):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from roi_agents.telemetry import names

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = {}
    for tokens in (2000, 200):
        middleware = BudgetMiddleware(
            budget=Budget(tokens=tokens),
            options=(DEEP, FAST),
            predictor=_prior(),
            expected_calls=1,
            tracer_provider=provider,
        )
        agent = create_agent(
            model=runaway_chat(tiny_chat_server), tools=[], middleware=[middleware]
        )
        result = agent.invoke({"messages": [HumanMessage("plan a trip")]})
        # One invocation, one trace: a roi.plan span, its decision a child spanning the call.
        finished = exporter.get_finished_spans()
        (plan,) = [s for s in finished if s.name == names.SPAN_PLAN]
        (span,) = [s for s in finished if s.name == names.SPAN_DECISION]
        assert span.parent.span_id == plan.context.span_id
        assert plan.attributes[names.DECISIONS] == 1
        assert plan.attributes[names.SCOPE].startswith("thread/")
        assert span.end_time > span.start_time
        exporter.clear()
        spans[tokens] = (span.attributes, _answer(result).usage_metadata)
    for tokens, option, cap in ((2000, "deep", 300), (200, "fast", 40)):
        attributes, usage = spans[tokens]
        assert attributes[names.OPTION] == option
        assert attributes[names.GEN_AI_USAGE_INPUT_TOKENS] == usage["input_tokens"]
        assert attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS] == usage["output_tokens"] <= cap
        assert attributes[names.TRUNCATED] is True  # the runaway model stops at every cap
        assert attributes[f"{names.BUDGET_BEFORE}.tokens"] == tokens
    provider.shutdown()


async def test_an_async_call_is_traced_the_same(tiny_chat_server):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from roi_agents.telemetry import names

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    middleware = BudgetMiddleware(
        budget=Budget(tokens=2000),
        options=(DEEP, FAST),
        predictor=_prior(),
        expected_calls=1,
        tracer_provider=provider,
    )
    client = httpx.AsyncClient(timeout=120)  # one per event loop
    model = runaway_chat(tiny_chat_server, async_client=client)
    agent = create_agent(model=model, tools=[], middleware=[middleware])
    try:
        result = await agent.ainvoke({"messages": [HumanMessage("plan a trip")]})
    finally:
        await client.aclose()
    (span,) = [s for s in exporter.get_finished_spans() if s.name == names.SPAN_DECISION]
    (plan,) = [s for s in exporter.get_finished_spans() if s.name == names.SPAN_PLAN]
    assert span.parent.span_id == plan.context.span_id
    assert span.attributes[names.OPTION] == "deep"
    assert (
        span.attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS]
        == (_answer(result).usage_metadata["output_tokens"])
    )
    provider.shutdown()


@pytest.mark.parametrize(("tokens", "deep"), [(3000, True), (400, False)])
def test_with_no_history_a_budget_that_pays_for_deep_buys_it(tiny_chat_server, tokens, deep):
    """The default options and prior: deep starts likelier to succeed than fast."""
    middleware = BudgetMiddleware(budget=Budget(tokens=tokens), expected_calls=1)
    agent = create_agent(model=runaway_chat(tiny_chat_server), middleware=[middleware])
    answer = _answer(agent.invoke({"messages": [HumanMessage("plan a trip")]}))
    # The runaway model stops at its cap: fast's is 256 output tokens.
    assert (answer.usage_metadata["output_tokens"] > 256) is deep
    assert answer.usage_metadata["total_tokens"] <= tokens


def test_ask_interrupts_with_what_the_answer_needs_and_a_bad_answer_is_asked_again(
    tiny_chat_server,
):
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command

    from roi_agents import BudgetQuestion

    middleware = BudgetMiddleware(
        budget=Budget(tokens=20),
        options=(DEEP, FAST),
        predictor=_prior(),
        expected_calls=1,
        on_exhausted="ask",
    )
    agent = create_agent(
        model=runaway_chat(tiny_chat_server),
        tools=[],
        middleware=[middleware],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "asked"}}
    first = agent.invoke({"messages": [HumanMessage("plan a trip")]}, config)
    question = BudgetQuestion.model_validate(first["__interrupt__"][0].value)
    assert question.remaining.tokens == 20
    assert question.shortfall.tokens == question.needs.tokens - 20 > 0
    assert question.options == ["deep", "fast"]
    for bad in ("lots", True, {"tokens": -5}):
        again = agent.invoke(Command(resume=bad), config)
        assert "resume" in again["__interrupt__"][0].value["error"]
    final = agent.invoke(Command(resume={"tokens": question.shortfall.tokens + 400}), config)
    assert "__interrupt__" not in final
    usage = _answer(final).usage_metadata
    assert usage["output_tokens"] > 0
    assert usage["input_tokens"] + usage["output_tokens"] <= 20 + question.shortfall.tokens + 400
