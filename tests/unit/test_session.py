"""The core budget turn, with no server: reserve before, charge once, never over the budget."""

import asyncio
import threading

import pytest
from forecasts import fixed_forecasts

from roi_agents import (
    Budget,
    BudgetExceeded,
    BudgetSession,
    Controller,
    Decision,
    InvalidValueError,
    Option,
    PriorPredictor,
    Spend,
    Step,
    price,
    prompt_bound,
)
from roi_agents.ledger import MemoryLedger, ScopeBudget

DEEP = Option(name="deep", max_tokens=256)
PRICED = Option(name="priced", max_tokens=256, input_price=100.0, output_price=400.0)
TABLE = {"fast": (0.5, 40.0, 60.0, 80.0), "deep": (0.9, 200.0, 300.0, 400.0)}


def _runaway(session, option=DEEP, prompt=50, decision=None):
    """One call that spends all it may: the worst case a server can do."""
    with session.call(decision, option, prompt=prompt) as call:
        return call.charge(price(option, prompt, call.max_tokens))


def _until_refused(call, n=10):
    """Call ``call`` up to ``n`` times until the budget refuses: (results, the refusal)."""
    results = []
    for _ in range(n):
        try:
            results.append(call())
        except BudgetExceeded as refused:
            return results, refused
    raise AssertionError("never refused")


def test_a_runaway_never_spends_more_than_the_budget_and_the_last_call_is_refused():
    session = BudgetSession(Budget(tokens=1000))
    sent, refused = _until_refused(lambda: _runaway(session))
    report = session.report()
    assert len(sent) == 4  # 3 x 306 tokens, then 82 left: one more of 32 output tokens
    assert report.spent.tokens == report.committed.tokens == 1000
    assert (refused.resource, refused.limit, refused.requested) == ("tokens", 0, 51)
    assert report.reserved.tokens == 0
    assert not report.overrun
    assert report.calls == 4


def test_without_a_decision_the_cap_is_what_is_left():
    session = BudgetSession(Budget(tokens=300))
    with session.call(None, Option(name="any"), prompt=100) as call:
        assert call.max_tokens == 200
        call.charge(Spend(input_tokens=100, output_tokens=20))
    assert session.remaining().tokens == 180


def test_a_prompt_that_alone_does_not_fit_is_never_sent():
    session = BudgetSession(Budget(tokens=600))
    tools = [
        {"type": "function", "function": {"name": f"tool_{i}", "parameters": {}}} for i in range(4)
    ]
    count = prompt_bound([{"role": "user", "content": "hi"}], tools)
    assert count.tokens > 600  # the tool preamble and schemas alone
    with pytest.raises(BudgetExceeded) as info, session.call(None, DEEP, prompt=count):
        raise AssertionError("never reached: refused on entry")
    assert info.value.requested == count.tokens + 1
    assert session.report().calls == 0
    assert session.remaining().tokens == 600


@pytest.mark.parametrize("callers", ["threads", "tasks"])
def test_calls_sharing_one_session_never_overspend(callers):
    session = BudgetSession(Budget(tokens=1500))
    option = Option(name="o", max_tokens=128)
    refused = []

    def one():
        for _ in range(3):
            try:
                _runaway(session, option, prompt=40)
            except BudgetExceeded:
                refused.append(1)

    async def aone():
        for _ in range(3):
            try:
                async with session.call(None, option, prompt=40) as call:
                    await asyncio.sleep(0.001)
                    await call.acharge(price(option, 40, call.max_tokens))
            except BudgetExceeded:
                refused.append(1)

    if callers == "threads":
        workers = [threading.Thread(target=one) for _ in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    else:

        async def main():
            await asyncio.gather(*(aone() for _ in range(8)))

        asyncio.run(main())
    report = session.report()
    assert report.committed.tokens == report.spent.tokens <= 1500
    assert report.committed.tokens >= 1500 - 41  # the budget was used, not left idle
    assert report.calls + len(refused) == 24
    assert report.reserved.tokens == 0


def test_a_failed_attempt_is_charged_at_its_cap():
    session = BudgetSession(Budget(tokens=1000))
    with pytest.raises(RuntimeError, match="after the call"), session.call(None, DEEP, prompt=50):
        raise RuntimeError("the server answered, then the node failed after the call")
    report = session.report()
    assert report.spent == Spend(input_tokens=50, output_tokens=256)
    assert report.failed == 1
    assert report.committed.tokens == 306


def test_a_reply_without_usage_is_charged_at_its_cap():
    session = BudgetSession(Budget(tokens=1000))
    with session.call(None, DEEP, prompt=10) as call:
        charged = call.charge(None)
    assert charged.tokens == 266
    assert session.report().unmetered == 1


def test_usd_budgets_cap_and_charge_at_list_prices():
    session = BudgetSession(Budget(usd=0.2))
    spent, refused = _until_refused(lambda: _runaway(session, PRICED, prompt=100))
    report = session.report()
    assert report.spent.usd == pytest.approx(sum(s.usd for s in spent))
    assert report.committed.usd <= 0.2 + 1e-9
    assert refused.resource == "usd"
    assert not report.overrun


def test_commit_is_once_per_call():
    session = BudgetSession(Budget(tokens=1000))
    hold = session.reserve(None, DEEP, prompt=10, call_id="c1")
    assert session.reserve(None, DEEP, prompt=10, call_id="c1").reservation == hold.reservation
    session.commit(hold, Spend(input_tokens=10, output_tokens=5))
    session.commit(hold, Spend(input_tokens=10, output_tokens=5))  # a replay
    report = session.report()
    assert report.calls == 1
    assert report.committed.tokens == report.spent.tokens == 15


def test_spend_without_a_hold_is_never_lost_and_an_overrun_is_flagged():
    session = BudgetSession(Budget(tokens=100))
    session.charge(Spend(input_tokens=80, output_tokens=70), step_id="s")
    report = session.report()
    assert report.committed.tokens == 150
    assert report.overrun
    assert report.remaining["tokens"] == -50  # not floored
    assert session.spent_on("s").tokens == 150
    session.charge(Spend(output_tokens=5), step_id="s")  # overrun already: still recorded
    assert session.report().committed.tokens == 155


def test_running_out_is_one_vocabulary():
    steps = [Step(id=f"s{i}", options=(Option(name="fast"), DEEP)) for i in range(2)]
    forecasts = fixed_forecasts(steps, TABLE)
    degrade = BudgetSession(Budget(tokens=30), controller=Controller())
    decision = degrade.decide(steps, forecasts)
    assert decision.skipped
    assert decision.exhausted
    error = BudgetSession(Budget(tokens=30), on_exhausted="error")
    with pytest.raises(BudgetExceeded) as info:
        error.decide(steps, forecasts)
    assert (info.value.limit, info.value.requested) == (30, 60)  # fast at p90
    # With the controller's own predictor, the figures are its forecasts' too.
    predicting = BudgetSession(
        Budget(tokens=30), controller=Controller(predictor=PriorPredictor()), on_exhausted="error"
    )
    with pytest.raises(BudgetExceeded) as info:
        predicting.decide(steps)
    cheapest = min(f.tokens.p90 for f in PriorPredictor().predict(steps[:1]))
    assert (info.value.limit, info.value.requested) == (30, cheapest)
    with pytest.raises(InvalidValueError, match="on_exhausted"):
        BudgetSession(Budget(tokens=30), on_exhausted="skip")
    # A skip for value is not running out.
    rich = BudgetSession(Budget(tokens=10_000)).decide(steps, forecasts)
    assert not rich.exhausted


def test_sessions_on_a_shared_ledger_hold_the_widest_budget():
    ledger = MemoryLedger()
    ledger.set_budget(ScopeBudget(scope="acme", tokens=700))
    a = BudgetSession(Budget(tokens=500), ledger=ledger, scope="acme/a")
    b = BudgetSession(Budget(tokens=500), ledger=ledger, scope="acme/b")
    for session in (a, b):
        _until_refused(lambda session=session: _runaway(session))
    assert ledger.balance("acme").committed.tokens == 700
    assert a.report().committed.tokens <= 500
    assert b.report().committed.tokens <= 500
    with pytest.raises(InvalidValueError, match="scope"):
        BudgetSession(ledger=ledger)


def test_bad_input_is_named():
    session = BudgetSession(Budget(tokens=100))
    for prompt in (-1, True, "5", 1.5):
        with pytest.raises(InvalidValueError, match="prompt"):
            session.reserve(None, DEEP, prompt=prompt)
    with pytest.raises(InvalidValueError, match="budget"):
        BudgetSession()
    with pytest.raises(InvalidValueError, match="budget"):
        BudgetSession({"tokens": 5})


def test_each_call_is_a_decision_span_around_the_call_with_its_prompt_count():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from roi_agents.telemetry import names

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    session = BudgetSession(Budget(tokens=1000), tracer_provider=provider)
    count = prompt_bound([{"role": "user", "content": "hi"}])
    with session.call(None, DEEP, prompt=count) as call:
        with provider.get_tracer("llm").start_as_current_span("chat tiny"):
            pass  # what an LLM instrumentation would trace
        call.charge(Spend(input_tokens=30, output_tokens=200), truncated=True)
    with pytest.raises(RuntimeError), session.call(None, DEEP, prompt=10):
        raise RuntimeError("after the call")
    chat, decision, failed = exporter.get_finished_spans()
    assert chat.parent.span_id == decision.context.span_id
    assert decision.attributes[names.PROMPT_TOKENS] == count.tokens
    assert decision.attributes[names.PROMPT_COUNTED_BY] == "bound"
    assert decision.attributes[names.GEN_AI_REQUEST_MAX_TOKENS] == 256
    assert decision.attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS] == 200
    assert decision.attributes[names.TRUNCATED] is True
    assert [e.name for e in failed.events] == ["exception", names.EVENT_USAGE_MISSING]
    assert failed.attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS] == 256  # charged at its cap
    provider.shutdown()


def test_a_budget_beside_a_shared_ledger_never_replaces_its_limits():
    ledger = MemoryLedger()
    ledger.set_budget(ScopeBudget(scope="acme", tokens=100_000, usd=0.0005, period="daily"))
    with pytest.raises(InvalidValueError, match="already has limits"):
        BudgetSession(Budget(tokens=100_000), ledger=ledger, scope="acme")
    assert ledger.balance("acme").budget.usd == 0.0005
    assert BudgetSession(ledger=ledger, scope="acme").budget.usd == 0.0005


def test_an_answer_to_ask_that_would_overflow_is_asked_again():
    asked = []
    answers = iter([Budget(tokens=2**53), Budget(tokens=500)])

    def ask(question):
        asked.append(question)
        return next(answers)

    steps = [Step(id="s0", options=(Option(name="fast"),))]
    forecasts = fixed_forecasts(steps, TABLE)
    session = BudgetSession(Budget(tokens=30), on_exhausted="ask", ask=ask)
    decision = session.decide(steps, forecasts)
    assert not decision.skipped
    first, second = asked
    # What the step needs, what is left and the least to grant, per resource.
    assert first.remaining.tokens == 30
    assert first.needs.tokens > 30
    assert first.shortfall.tokens == first.needs.tokens - 30
    assert first.options == ["fast"]
    assert first.error is None
    assert "less than or equal" in second.error  # the first answer was out of range
    assert session.budget.tokens == 530 == session.ledger.balance("run").budget.tokens


@pytest.mark.parametrize("value", ["5", True, 2**63, 1e300])
def test_budgets_are_exact_and_bounded(value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Budget(tokens=value)


def test_an_option_may_not_be_called_skip():
    with pytest.raises(ValueError, match="reserved"):
        Step(id="s", options=(Option(name="skip"),))


def test_a_pool_keeps_the_sessions_used_last_and_remakes_others_from_the_ledger():
    from roi_agents.session import SessionPool

    pool = SessionPool(scope="thread", max_sessions=2)
    first = pool.get("thread/a", Budget(tokens=100))
    first.charge(Spend(output_tokens=30), step_id="s")
    pool.get("thread/b", Budget(tokens=100))
    assert pool.get("thread/a", Budget(tokens=100)) is first  # used last: kept
    pool.get("thread/c", Budget(tokens=100))  # b goes
    again = pool.get("thread/b", Budget(tokens=999))
    assert again.budget.tokens == 100  # the scope's limits, from the ledger
    assert pool.get("thread/a", Budget(tokens=100)).remaining().tokens == 70
    with pytest.raises(InvalidValueError, match="max_sessions"):
        SessionPool(max_sessions=0)


def test_a_pool_takes_up_a_restored_runs_spend_once():
    from roi_agents.session import SessionPool

    spent = Spend(input_tokens=40, output_tokens=60)
    # A new process: its in-memory ledger never saw the run, whose state says it spent 100.
    fresh = SessionPool().get("run/t", Budget(tokens=300), spent=spent)
    assert fresh.remaining().tokens == 200
    assert fresh.report().spent == spent
    # The same process: the ledger knows, so nothing is charged again.
    pool = SessionPool(max_sessions=1)
    pool.get("run/t", Budget(tokens=300)).charge(spent, step_id="s")
    pool.get("run/u", Budget(tokens=300))  # run/t's session goes
    again = pool.get("run/t", Budget(tokens=300), spent=spent)
    assert again.remaining().tokens == 200
    assert again.report().spent == spent


@pytest.mark.parametrize("value", [10**30, [2000], "2000", True, -5, {"tokens": 2**60}])
def test_a_granted_budget_out_of_range_is_an_error_that_asks_again(value):
    from roi_agents.session import extra_budget

    with pytest.raises(InvalidValueError, match="resume"):
        extra_budget(value)


def test_a_budget_that_limits_nothing_is_refused_at_once():
    with pytest.raises(InvalidValueError, match="limits nothing"):
        BudgetSession(Budget())


@pytest.mark.parametrize("step_id", ["a\nfake log line", "\x1b[31mred", "x" * 257, "tab\there"])
def test_step_ids_are_printable_names(step_id):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="id"):
        Step(id=step_id, options=(Option(name="fast"),))


def test_the_summary_counts_in_words():
    session = BudgetSession(Budget(tokens=100))
    session.charge(Spend(input_tokens=50, output_tokens=49), step_id="s1")
    out = Decision.skip("s2", "skip: no option fits", exhausted=True)
    said = session.summary([out.model_copy(update={"needs": {"tokens": 2.0}})])
    assert said == (
        "Spent 99 of 100 tokens in 1 call. The budget ran out before s2: it needs about 2 "
        "tokens, 1 is left (add at least 1 token to run it)."
    )


def test_a_run_is_one_trace_until_it_finishes():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from roi_agents.telemetry import names

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    session = BudgetSession(Budget(tokens=1_000), run_id="thread-1", tracer_provider=provider)
    option = Option(name="o", max_tokens=50)
    for _ in range(2):  # two runs of the same thread
        for _ in range(2):
            with session.call(None, option, prompt=10) as call:
                call.charge(Spend(input_tokens=10, output_tokens=20))
        session.finish()
    session.finish()  # a finished run: nothing more to close
    spans = exporter.get_finished_spans()
    plans = [s for s in spans if s.name == names.SPAN_PLAN]
    assert [p.attributes[names.DECISIONS] for p in plans] == [2, 2]
    assert [p.attributes[f"{names.SPENT}.tokens"] for p in plans] == [60, 120]  # the thread's
    assert {p.attributes[names.RUN_ID] for p in plans} == {"thread-1"}
    for plan in plans:
        children = [s for s in spans if s.parent and s.parent.span_id == plan.context.span_id]
        assert len(children) == 2
        assert {c.context.trace_id for c in children} == {plan.context.trace_id}
        # Kinds a trace UI shows (Phoenix: a chain of LLM calls), and the GenAI operation.
        assert plan.attributes[names.OPENINFERENCE_SPAN_KIND] == "CHAIN"
        assert plan.attributes[names.GEN_AI_OPERATION_NAME] == "invoke_agent"
        assert {c.attributes[names.OPENINFERENCE_SPAN_KIND] for c in children} == {"LLM"}
        assert {c.attributes[names.GEN_AI_OPERATION_NAME] for c in children} == {"chat"}
    provider.shutdown()
