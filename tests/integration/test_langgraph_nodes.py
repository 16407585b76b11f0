"""The planning nodes in a real LangGraph graph, calling a real vLLM server (runaway model)."""

import uuid

import httpx
import pytest
from langchain_core.runnables import RunnableLambda
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from live import runaway_chat
from roi_agents_langgraph import (
    BudgetControllerNode,
    BudgetState,
    MetaCognitiveNode,
    add_budget_loop,
    budgeted,
    current_step,
)

from roi_agents import Budget, BudgetQuestion, Controller, Option, PriorPredictor, Spend, Step
from roi_agents.errors import BudgetExceeded
from roi_agents.ledger import MemoryLedger, ScopeBudget
from roi_agents.predict import GuardedPredictor

pytestmark = pytest.mark.integration

OPTIONS = (
    Option(name="fast", model="tiny", max_tokens=16),
    Option(name="deep", model="tiny", max_tokens=200),
)


def _prior():
    prior = PriorPredictor(group_by=False)
    step = Step(id="warm", options=OPTIONS)
    for k in range(10):
        prior.observe(step, "fast", Spend(input_tokens=40, output_tokens=16), success=k < 5)
        prior.observe(step, "deep", Spend(input_tokens=40, output_tokens=150), success=k < 9)
    return prior


def _graph(
    server,
    *,
    ledger=None,
    scope="run",
    checkpointer=None,
    interrupt_before=None,
    async_client=None,
    on_exhausted="degrade",
    tracer_provider=None,
    learner=None,
):
    model = runaway_chat(server, async_client=async_client)
    control = BudgetControllerNode(
        Controller(),
        ledger=ledger,
        scope=scope,
        on_exhausted=on_exhausted,
        tracer_provider=tracer_provider,
        learner=learner,
    )
    calls = []

    def _settle(state, step, message):
        calls.append(step.id)
        # With a learner, every answer is graded: the tiny random model's are gibberish.
        success = 0.0 if learner is not None else None
        truncated = message.response_metadata.get("finish_reason") == "length"
        return control.settle(state, success=success, truncated=truncated)

    def execute(state: BudgetState) -> dict:
        step, decision = current_step(state)
        chat = budgeted(model, session=control.session(state))
        try:
            message = chat.invoke(
                step.text, decision=decision, option=step.option(decision.option), step=step
            )
        except BudgetExceeded:
            return control.skip(state)  # the prompt does not fit: never sent
        return _settle(state, step, message)

    async def aexecute(state: BudgetState) -> dict:
        step, decision = current_step(state)
        chat = budgeted(model, session=control.session(state))
        try:
            message = await chat.ainvoke(
                step.text, decision=decision, option=step.option(decision.option), step=step
            )
        except BudgetExceeded:
            return control.skip(state)
        return _settle(state, step, message)

    graph = StateGraph(BudgetState)
    add_budget_loop(
        graph,
        MetaCognitiveNode(learner or _prior()),
        control,
        RunnableLambda(execute, afunc=aexecute),
    )
    compiled = graph.compile(checkpointer=checkpointer, interrupt_before=interrupt_before)
    return compiled, control, calls


def _served(control, final):
    """What the run's session charged: every call through it."""
    return control.session(final).report().spent.tokens


def _start(budget, n=6):
    steps = [
        Step(id=f"s{i}", text=f"research step {i}: summarise the findings", options=OPTIONS)
        for i in range(n)
    ]
    return {
        "budget": Budget(tokens=budget).model_dump(),
        "pending": [s.model_dump() for s in steps],
    }


def _config():
    return {"configurable": {"thread_id": uuid.uuid4().hex}, "recursion_limit": 100}


@pytest.mark.parametrize("budget", [250, 1200])
def test_graph_never_spends_more_than_its_budget(tiny_chat_server, budget):
    graph, control, calls = _graph(tiny_chat_server)
    final = graph.invoke(_start(budget), _config())
    assert final["spent"]["input_tokens"] + final["spent"]["output_tokens"] <= budget
    assert (
        _served(control, final) == final["spent"]["input_tokens"] + final["spent"]["output_tokens"]
    )
    decisions = final["decisions"]
    assert len(decisions) == 6
    # Skipped steps are never called; every other step was called exactly once.
    ran = [d["step_id"] for d in decisions if d["option"] != "skip"]
    assert calls == [s for s in ran if s in calls]
    assert all(d["step_id"] not in calls for d in decisions if d["option"] == "skip")
    assert final["pending"] == []


@pytest.mark.parametrize("saver", ["memory", "sqlite"])
def test_interrupt_and_resume_neither_loses_nor_double_counts(tiny_chat_server, tmp_path, saver):
    if saver == "memory":
        checkpointer = InMemorySaver()
    else:
        import sqlite3

        checkpointer = SqliteSaver(sqlite3.connect(tmp_path / "cp.db", check_same_thread=False))
    graph, control, calls = _graph(
        tiny_chat_server, checkpointer=checkpointer, interrupt_before=["execute"]
    )
    config = _config()
    state = graph.invoke(_start(1200, n=4), config)
    paused = 0
    while graph.get_state(config).next:
        paused += 1
        state = graph.invoke(None, config)  # resume from the checkpoint
    assert paused >= 1
    spent = state["spent"]["input_tokens"] + state["spent"]["output_tokens"]
    assert spent == _served(control, state)  # nothing lost, nothing counted twice
    assert len(state["charged"]) == len(calls) == len(set(calls))
    assert spent <= 1200


def test_a_replayed_call_is_charged_once():
    """settle() with a call id already charged (a retry, a replay) adds nothing."""
    control = BudgetControllerNode(Controller())
    step = Step(id="s0", options=OPTIONS)
    decision = Controller().plan([step], Budget(tokens=100), forecasts=_prior().predict([step]))
    state = {
        "budget": Budget(tokens=100).model_dump(),
        "scope": "run/t",
        "pending": [step.model_dump(), step.model_dump()],
        "decision": decision.next.model_dump(),
        "spent": Spend(output_tokens=10).model_dump(),
        "charged": ["t:s0"],
    }
    update = control.settle(state, Spend(output_tokens=10), call_id="t:s0")
    assert "spent" not in update
    assert len(update["pending"]) == 1
    update = control.settle(state, Spend(output_tokens=10), call_id="t:s1")
    assert update["spent"]["output_tokens"] == 10
    # This node never saw the run: the 10 its state says were spent before are taken up once,
    # then the new 10.
    assert control.session(state).report().committed.tokens == 20


def test_the_controller_node_tells_its_learner_each_graded_outcome(tiny_chat_server):
    """The runaway model stops at every cap: each call is a truncated outcome for the guard."""
    guard = GuardedPredictor(_prior(), _prior(), min_outcomes=2)
    graph, _chat, calls = _graph(tiny_chat_server, learner=guard)
    final = graph.invoke(_start(1200, n=5), _config())
    ran = [d["option"] for d in final["decisions"] if d["option"] != "skip"]
    assert len(ran) == len(calls) >= 2
    scored = {(t.option, t.part): t.outcomes for t in guard.trust() if t.group is None}
    # Truncated: the cost is scored as a lower bound, the success not at all.
    assert scored == {(option, "cost"): ran.count(option) for option in set(ran)}
    # And the prior learned nothing from them: its forecasts are the warm-up's.
    assert guard.prior.predict([Step(id="x", options=OPTIONS)]) == _prior().predict(
        [Step(id="x", options=OPTIONS)]
    )


def test_settle_tells_the_learner_a_finished_step_once():
    prior = _prior()
    control = BudgetControllerNode(Controller(), learner=prior)
    step = Step(id="s0", text="a step", options=OPTIONS)
    decision = Controller().plan([step], Budget(tokens=1000), forecasts=prior.predict([step])).next
    state = {
        "budget": Budget(tokens=1000).model_dump(),
        "scope": "run/t",
        "pending": [step.model_dump()],
        "decision": decision.model_dump(),
    }
    before = {f.option: f.p_success for f in prior.predict([step])}
    spend = Spend(input_tokens=40, output_tokens=10)
    update = control.settle(state, spend, call_id="t:s0", success=1.0)
    control.settle({**state, **update}, spend, call_id="t:s0", success=1.0)  # a replay
    control.settle(state, spend, call_id="t:s1")  # not graded: nothing to learn
    after = {f.option: f.p_success for f in prior.predict([step])}
    # 10 pseudo-observations at the option's starting point (fast 0.4, deep 0.6) and 10 warm-up
    # outcomes, then one success.
    start = {"fast": 4, "deep": 6}[decision.option]
    warm = {"fast": 5, "deep": 9}[decision.option]
    assert before[decision.option] == pytest.approx((start + warm) / 20)
    assert after[decision.option] == pytest.approx((start + warm + 1) / 21)


def test_graph_spends_from_a_shared_ledger_scope(tiny_chat_server):
    ledger = MemoryLedger()
    ledger.set_budget(ScopeBudget(scope="team", tokens=700))
    ledger.set_budget(ScopeBudget(scope="team/a", tokens=5000))
    graph, control, _ = _graph(tiny_chat_server, ledger=ledger, scope="team/a")
    final = graph.invoke(_start(5000), _config())
    balance = ledger.balance("team")
    spent = final["spent"]["input_tokens"] + final["spent"]["output_tokens"]
    assert balance.committed.tokens == spent == _served(control, final)
    assert spent <= 700  # the tenant's budget bound the graph, not the graph's own 5000
    assert balance.reserved.tokens == 0


async def test_async_graph_run(tiny_chat_server):
    client = httpx.AsyncClient(timeout=120)  # one per event loop
    graph, _, _ = _graph(tiny_chat_server, async_client=client)
    try:
        final = await graph.ainvoke(_start(600, n=3), _config())
    finally:
        await client.aclose()
    assert final["spent"]["input_tokens"] + final["spent"]["output_tokens"] <= 600
    assert len(final["decisions"]) == 3


def test_graph_shape():
    from roi_agents_vllm import VLLMServer  # noqa: F401 - the integration imports cleanly

    graph, _, _ = _graph(type("S", (), {"base_url": "http://127.0.0.1:9/v1"})())
    assert graph.get_graph().draw_mermaid() == MERMAID


MERMAID = """---
config:
  flowchart:
    curve: linear
---
graph TD;
\t__start__([<p>__start__</p>]):::first
\tforecast(forecast)
\tcontrol(control)
\texecute(execute)
\tskip(skip)
\t__end__([<p>__end__</p>]):::last
\t__start__ --> forecast;
\tcontrol -. &nbsp;finish&nbsp; .-> __end__;
\tcontrol -.-> execute;
\tcontrol -.-> skip;
\texecute --> forecast;
\tforecast --> control;
\tskip --> forecast;
\tclassDef default fill:#f2f0ff,line-height:1.2
\tclassDef first fill-opacity:0
\tclassDef last fill:#bfb6fc
"""


def test_ask_for_more_budget_with_interrupt_and_resume(tiny_chat_server):
    from langgraph.types import Command

    graph, _, calls = _graph(tiny_chat_server, checkpointer=InMemorySaver(), on_exhausted="ask")
    config = _config()
    first = graph.invoke(_start(30, n=3), config)  # too little for any step
    (question,) = first["__interrupt__"]
    assert question.value["step"] == "s0"
    assert question.value["remaining"] == {"tokens": 30}
    asked = BudgetQuestion.model_validate(question.value)
    assert asked.options == ["fast", "deep"]
    assert asked.needs.tokens > 30
    assert asked.shortfall.tokens == asked.needs.tokens - 30
    assert calls == []
    # A resume that is no budget is not taken: asked again, the thread is not stuck.
    for bad in (-5, "2000", True, {"token": 2000}, {"tokens": -5}, 2**62, [2000]):
        again = graph.invoke(Command(resume=bad), config)
        (question,) = again["__interrupt__"]
        assert "resume" in question.value["error"]
    final = graph.invoke(Command(resume={"tokens": 2000}), config)
    assert "__interrupt__" not in final
    assert final["budget"]["tokens"] == 2030
    spent = final["spent"]["input_tokens"] + final["spent"]["output_tokens"]
    assert 0 < spent <= 2030
    assert calls  # the extra budget paid for real calls
    # Declining (0; LangGraph takes resume=None for no answer at all) skips each step asked for.
    calls.clear()
    config = _config()
    state = graph.invoke(_start(30, n=3), config)
    declined = 0
    while "__interrupt__" in state:
        state = graph.invoke(Command(resume=0), config)
        declined += 1
    assert declined == 3
    assert [d["option"] for d in state["decisions"]] == ["skip"] * 3
    assert calls == []
    assert state["budget"]["tokens"] == 30


def test_send_fan_out_branches_share_the_budget_through_reservations(tiny_chat_server):
    """Branches started with Send reserve from one session: never both the last tokens."""
    import operator
    from typing import Annotated

    from langgraph.types import Send
    from typing_extensions import TypedDict

    from roi_agents import BudgetSession

    session = BudgetSession(Budget(tokens=500))
    chat = budgeted(runaway_chat(tiny_chat_server), session=session, option=OPTIONS[1])

    class FanState(TypedDict):
        topics: list[str]
        done: Annotated[list[dict], operator.add]

    def branch(payload: dict) -> dict:
        try:
            message = chat.invoke(payload["topic"])  # capped at what is left, reserved first
        except BudgetExceeded:
            return {"done": [{"topic": payload["topic"], "tokens": 0}]}
        usage = message.usage_metadata
        return {"done": [{"topic": payload["topic"], "tokens": usage["total_tokens"]}]}

    graph = StateGraph(FanState)
    graph.add_node("branch", branch)
    graph.add_conditional_edges(
        START, lambda s: [Send("branch", {"topic": t}) for t in s["topics"]], ["branch"]
    )
    graph.add_edge("branch", END)
    final = graph.compile().invoke({"topics": [f"topic {i}" for i in range(4)], "done": []})
    assert len(final["done"]) == 4
    served = sum(d["tokens"] for d in final["done"])
    report = session.report()
    assert served == report.committed.tokens == report.spent.tokens <= 500
    assert sum(d["tokens"] > 0 for d in final["done"]) >= 2  # the budget was shared, not hoarded


def test_the_nodes_trace_every_decision_with_its_real_usage(tiny_chat_server):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from roi_agents.telemetry import names

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    graph, control, _ = _graph(tiny_chat_server, tracer_provider=provider)
    with provider.get_tracer("test").start_as_current_span("agent.invoke") as outer:
        final = graph.invoke(_start(700, n=5), _config())
    spans = [s for s in exporter.get_finished_spans() if s.name == names.SPAN_DECISION]
    assert [s.attributes[names.STEP_ID] for s in spans] == [
        d["step_id"] for d in final["decisions"]
    ]
    assert [s.attributes[names.OPTION] for s in spans] == [d["option"] for d in final["decisions"]]
    traced = sum(
        s.attributes.get(names.GEN_AI_USAGE_INPUT_TOKENS, 0)
        + s.attributes.get(names.GEN_AI_USAGE_OUTPUT_TOKENS, 0)
        for s in spans
    )
    assert traced == _served(control, final)
    # The runaway model stops at every cap: each step that ran is traced as cut off (one whose
    # prompt did not fit was never sent).
    ran = [s.attributes.get(names.GEN_AI_USAGE_OUTPUT_TOKENS, 0) > 0 for s in spans]
    assert any(ran)
    assert [s.attributes[names.TRUNCATED] for s in spans] == ran
    # One run, one trace: a roi.plan span under the caller's span, every decision its child.
    (plan,) = [s for s in exporter.get_finished_spans() if s.name == names.SPAN_PLAN]
    assert plan.parent.span_id == outer.get_span_context().span_id
    assert {s.parent.span_id for s in spans} == {plan.context.span_id}
    assert {s.context.trace_id for s in spans} == {outer.get_span_context().trace_id}
    assert plan.attributes[names.DECISIONS] == len(spans)
    assert plan.attributes[names.RUN_ID] == final["scope"]
    assert plan.attributes[f"{names.SPENT}.tokens"] == _served(control, final)
    assert all(s.end_time > s.start_time for s in spans if s.attributes[names.OPTION] != "skip")
    # The plan and every re-plan: an event on the run's span, fewer steps pending each time.
    plans = [e for e in plan.events if e.name == names.EVENT_PLAN]
    assert [len(e.attributes[names.PLAN_OPTIONS]) for e in plans] == [5, 4, 3, 2, 1]
    assert [e.attributes[names.PLAN_OPTIONS][0] for e in plans] == [
        d["option"] for d in final["decisions"]
    ]
    assert all(
        e.attributes[names.PLAN_UPPER_BOUND] >= e.attributes[names.PLAN_EXPECTED_VALUE] - 1e-9
        for e in plans
    )
    provider.shutdown()


def test_each_invocation_of_a_thread_is_a_trace_of_its_own(tiny_chat_server):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from roi_agents.telemetry import names

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    graph, control, calls = _graph(
        tiny_chat_server, tracer_provider=provider, checkpointer=InMemorySaver()
    )
    config = _config()
    for _ in range(2):  # no caller span: each invocation is a root of its own
        final = graph.invoke(_start(2_000, n=2), config)
    # The second run's steps have the first run's names: each is settled as its own.
    assert len(calls) == 4
    assert final["spent"]["input_tokens"] + final["spent"]["output_tokens"] == _served(
        control, final
    )
    assert len(final["charged"]) == 4
    finished = exporter.get_finished_spans()
    plans = [s for s in finished if s.name == names.SPAN_PLAN]
    assert len(plans) == 2
    assert all(p.parent is None for p in plans)
    assert len({p.context.trace_id for p in plans}) == 2
    assert {p.attributes[names.RUN_ID] for p in plans} == {
        f"run/{config['configurable']['thread_id']}"
    }
    for plan in plans:
        children = [
            s
            for s in finished
            if s.name == names.SPAN_DECISION and s.parent.span_id == plan.context.span_id
        ]
        assert len(children) == 2 == plan.attributes[names.DECISIONS]
    provider.shutdown()


def test_a_retried_node_is_charged_for_every_attempt(tiny_chat_server):
    """RetryPolicy: the attempt that failed after its call was served, so it is charged too."""
    from langgraph.types import RetryPolicy

    model = runaway_chat(tiny_chat_server)
    control = BudgetControllerNode(Controller())
    attempts = []

    def flaky_execute(state: BudgetState) -> dict:
        step, decision = current_step(state)
        chat = budgeted(model, session=control.session(state))
        message = chat.invoke(step.text, decision=decision, option=step.option(decision.option))
        attempts.append(message.usage_metadata["total_tokens"])
        if len(attempts) == 1:
            msg = "network blip after the call"
            raise ConnectionError(msg)
        return control.settle(state)

    graph = StateGraph(BudgetState)
    add_budget_loop(
        graph,
        MetaCognitiveNode(_prior()),
        control,
        flaky_execute,
        retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.01, retry_on=ConnectionError),
    )
    final = graph.compile().invoke(_start(2000, n=1), _config())
    assert len(attempts) == 2
    spent = final["spent"]["input_tokens"] + final["spent"]["output_tokens"]
    assert spent == sum(attempts) == _served(control, final) <= 2000
    assert len(final["charged"]) == 1


def test_a_run_resumed_in_a_new_process_does_not_spend_its_budget_twice(tiny_chat_server, tmp_path):
    """A restart between steps: the new process's in-memory ledger never saw the run's spend."""
    import sqlite3

    from live import served

    def saver():
        return SqliteSaver(sqlite3.connect(tmp_path / "cp.db", check_same_thread=False))

    config = _config()
    before = served(tiny_chat_server)
    graph, _, first_calls = _graph(
        tiny_chat_server, checkpointer=saver(), interrupt_before=["execute"]
    )
    graph.invoke(_start(700, n=6), config)
    graph.invoke(None, config)  # one step runs, then it pauses before the next
    assert first_calls
    # "Restart": new nodes, a new in-memory ledger, the same checkpoints.
    graph, control, _ = _graph(tiny_chat_server, checkpointer=saver(), interrupt_before=["execute"])
    state = graph.invoke(None, config)
    while graph.get_state(config).next:
        state = graph.invoke(None, config)
    server = served(tiny_chat_server) - before
    spent = state["spent"]["input_tokens"] + state["spent"]["output_tokens"]
    assert server <= 700
    assert spent == server  # nothing lost, nothing counted twice
    assert control.session(state).report().committed.tokens == server


@pytest.mark.parametrize(
    ("given", "named"),
    [
        # LangGraph drops keys the state does not have: "steps" never reaches a node.
        ({"steps": ["a"], "budget": {"tokens": 100}}, "the graph's state has no 'pending' steps"),
        ({"pending": []}, "the graph's state has no 'budget'"),
        ({"budget": {"tokens": -5}, "pending": []}, "budget['tokens']: Input should be"),
        ({"budget": {"tokens": 100}, "pending": "s0"}, "pending: expected a list of steps"),
        ({"budget": {"tokens": 100}, "pending": [{"id": "s0"}]}, "pending[0]['options']"),
        ({"budget": {}, "pending": []}, "budget: limits nothing: give tokens="),
    ],
)
def test_a_malformed_input_is_refused_naming_the_key_and_the_shape(tiny_chat_server, given, named):
    from roi_agents.errors import InvalidValueError

    graph, _, calls = _graph(tiny_chat_server)
    with pytest.raises(InvalidValueError) as refused:
        graph.invoke(given, _config())
    assert named in str(refused.value)
    if "limits nothing" not in named:
        assert "'pending': [Step(...).model_dump(), ...]" in str(refused.value)
    assert calls == []


def test_a_run_with_nothing_to_do_still_has_its_report(tiny_chat_server):
    from roi_agents.errors import InvalidValueError

    graph, control, calls = _graph(tiny_chat_server)
    final = graph.invoke(_start(300, n=0), _config())
    assert final["scope"].startswith("run/")
    assert control.summary(final) == "Spent 0 of 300 tokens in 0 calls."
    assert calls == []
    with pytest.raises(InvalidValueError, match="the state has no 'scope'"):
        control.session({"budget": {"tokens": 300}})  # outside a run: said, not a RuntimeError


def test_a_step_without_input_tokens_gets_its_prompt_counted(tiny_chat_server):
    from langchain_core.messages import HumanMessage
    from roi_agents_langgraph import prompt_token_bound

    start = _start(400, n=2)
    for step in start["pending"]:
        step["input_tokens"] = None
    graph, control, calls = _graph(tiny_chat_server, checkpointer=InMemorySaver())
    config = _config()
    final = graph.invoke(start, config)
    first = graph.get_state_history(config)
    counted = [
        s.values["pending"][0]["input_tokens"]
        for s in first
        if s.values.get("pending") and s.values["pending"][0]["id"] == "s0"
    ]
    text = start["pending"][0]["text"]
    assert prompt_token_bound([HumanMessage(content=text)]) in counted
    assert calls
    assert _served(control, final) <= 400


def test_a_state_schema_without_the_budget_keys_is_refused_when_wired():
    from typing_extensions import TypedDict

    from roi_agents.errors import InvalidValueError

    class Mine(TypedDict):
        messages: list

    with pytest.raises(InvalidValueError, match="mix BudgetState into its schema"):
        add_budget_loop(
            StateGraph(Mine), MetaCognitiveNode(_prior()), BudgetControllerNode(), lambda s: {}
        )


def test_a_node_of_yours_can_follow_each_step(tiny_chat_server):
    """after_execute: execute -> your node (a tool node, say) -> forecast."""
    model = runaway_chat(tiny_chat_server)
    control = BudgetControllerNode()
    followed = []

    def execute(state: BudgetState) -> dict:
        step, decision = current_step(state)
        chat = budgeted(model, session=control.session(state))
        chat.invoke(step.text, decision=decision, option=step.option(decision.option), step=step)
        return control.settle(state)

    def after(state: BudgetState) -> dict:
        followed.append(len(state["decisions"]))
        return {}

    graph = StateGraph(BudgetState)
    add_budget_loop(graph, MetaCognitiveNode(_prior()), control, execute, after_execute="tools")
    graph.add_node("tools", after)
    graph.add_edge("tools", "forecast")
    final = graph.compile().invoke(_start(2_000, n=3), _config())
    ran = [d for d in final["decisions"] if d["option"] != "skip"]
    assert len(ran) == 3
    assert followed == [1, 2, 3]  # once after each step that ran, before the next plan
    assert _served(control, final) <= 2_000


def test_the_forecast_node_composes_a_predictor_that_does_not_learn():
    from roi_agents.predict import ComposedPredictor
    from roi_agents.predict.cache import CachedPredictor

    prior = PriorPredictor()
    assert MetaCognitiveNode(prior).predictor is prior
    node = MetaCognitiveNode(CachedPredictor(PriorPredictor()))
    assert isinstance(node.predictor, ComposedPredictor)
    step = Step(id="s", text="add two numbers", options=[Option(name="fast")])
    before = node.predictor.predict([step])[0].p_success
    for _ in range(20):
        node.predictor.observe(step, "fast", Spend(input_tokens=10, output_tokens=5), 1.0)
    assert node.predictor.predict([step])[0].p_success > before
