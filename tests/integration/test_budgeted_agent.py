"""The prebuilt agent against the real vLLM server (a runaway model)."""

import uuid

import pytest
from live import runaway_chat
from roi_agents_langgraph import create_budgeted_agent

from roi_agents import Budget

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("tokens", [400, 2500])
def test_agent_plans_executes_and_reports_within_budget(tiny_chat_server, tokens):
    agent = create_budgeted_agent(
        runaway_chat(tiny_chat_server),
        budget=Budget(tokens=tokens),
        max_steps=5,
        planning_tokens=120,
    )
    final = agent.invoke(
        {"task": "compare three vendors and draft a summary"},
        {"configurable": {"thread_id": uuid.uuid4().hex}, "recursion_limit": 200},
    )
    report = final["report"]
    spent = report["spent"]["input_tokens"] + report["spent"]["output_tokens"]
    assert spent <= tokens
    assert 1 <= report["steps"] <= 5
    ran = [r for r in final["results"] if "answer" in r]
    assert sum(r["tokens"] for r in ran) <= spent  # planning spent the rest
    assert report["skipped"] == report["steps"] - len(ran)


def test_agent_with_a_fixed_plan_skips_what_the_budget_cannot_pay(tiny_chat_server):
    steps = [f"step {i}: write a paragraph" for i in range(6)]
    agent = create_budgeted_agent(
        runaway_chat(tiny_chat_server), budget=Budget(tokens=300), planner=lambda task: steps
    )
    final = agent.invoke({"task": "six paragraphs"}, {"recursion_limit": 200})
    report = final["report"]
    assert report["steps"] == 6
    assert report["skipped"] >= 1
    spent = report["spent"]["input_tokens"] + report["spent"]["output_tokens"]
    assert spent <= 300
    # The last message says, for people, what was spent and what the rest would need.
    out = [d["step"] for d in report["decisions"] if d["option"] == "skip"]
    assert final["messages"][-1].content == report["summary"]
    assert report["summary"].startswith(f"Spent {spent:,} of 300 tokens in ")
    assert f"The budget ran out before {', '.join(out)}: " in report["summary"]


def test_agent_spends_from_a_shared_ledger_scope(tiny_chat_server):
    from roi_agents.ledger import MemoryLedger, ScopeBudget

    ledger = MemoryLedger()
    ledger.set_budget(ScopeBudget(scope="acme", tokens=400))
    ledger.set_budget(ScopeBudget(scope="acme/bob", tokens=10_000))
    agent = create_budgeted_agent(
        runaway_chat(tiny_chat_server),
        budget=Budget(tokens=10_000),
        planner=lambda task: [f"part {i}" for i in range(5)],
        ledger=ledger,
        scope="acme/bob",
    )
    final = agent.invoke(
        {"task": "five parts"},
        {"configurable": {"thread_id": uuid.uuid4().hex}, "recursion_limit": 200},
    )
    ran = sum(r["tokens"] for r in final["results"] if "answer" in r)
    balance = ledger.balance("acme")
    assert balance.committed.tokens == ran <= 400  # the tenant's budget held, not the run's
    assert balance.reserved.tokens == 0


def test_a_graded_agent_tells_its_predictor_every_answer(tiny_chat_server):
    from roi_agents import PriorPredictor
    from roi_agents.predict import GuardedPredictor

    guard = GuardedPredictor(PriorPredictor(), min_outcomes=2)
    graded = []

    def grade(step, answer):
        graded.append((step.id, answer))
        return 0.0  # the tiny random model's answers are gibberish

    agent = create_budgeted_agent(
        runaway_chat(tiny_chat_server),
        budget=Budget(tokens=1500),
        planner=lambda task: [f"part {i}: a paragraph" for i in range(4)],
        predictor=guard,
        grade=grade,
    )
    final = agent.invoke({"task": "four parts"}, {"recursion_limit": 200})
    ran = [r for r in final["results"] if "answer" in r]
    assert len(ran) >= 2
    assert graded == [(r["step"], r["answer"]) for r in ran]
    assert all(r["success"] == 0.0 for r in ran)
    # The runaway model stops at every cap: truncated answers, scored for cost only.
    scored = {(t.option, t.part): t.outcomes for t in guard.trust() if t.group is None}
    options = [r["option"] for r in ran]
    assert scored == {(option, "cost"): options.count(option) for option in set(options)}


def test_the_agent_asks_for_more_and_goes_on_with_what_it_is_granted(tiny_chat_server):
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command

    from roi_agents import BudgetQuestion

    agent = create_budgeted_agent(
        runaway_chat(tiny_chat_server),
        budget=Budget(tokens=40),
        planner=lambda task: ["write a paragraph"],
        on_exhausted="ask",
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "asked"}, "recursion_limit": 50}
    first = agent.invoke({"task": "one paragraph"}, config)
    question = BudgetQuestion.model_validate(first["__interrupt__"][0].value)
    assert question.step == "step-0"
    final = agent.invoke(Command(resume={"tokens": question.shortfall.tokens + 100}), config)
    report = final["report"]
    assert [r["step"] for r in final["results"] if "answer" in r] == ["step-0"]  # it ran
    assert report["budget"]["tokens"] == 40 + question.shortfall.tokens + 100
    assert not report["overrun"]
