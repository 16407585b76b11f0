"""A real LangGraph run traced: roi.plan and roi.decision spans nest under the caller's span."""

import operator
from typing import Annotated

import pytest
from forecasts import fixed_forecasts
from langgraph.graph import END, START, StateGraph
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from traced_run import OPTIONS, REAL, TABLE
from typing_extensions import TypedDict

from roi_agents import Budget, Controller, Spend, Step
from roi_agents.telemetry import RunTrace, names

pytestmark = pytest.mark.integration


class State(TypedDict):
    pending: list[dict]
    log: Annotated[list[dict], operator.add]


def _graph(run: RunTrace):
    controller = Controller()

    def act(state: State) -> dict:
        steps = [Step.model_validate(s) for s in state["pending"]]
        forecasts = fixed_forecasts(steps, TABLE)
        plan = controller.plan(steps, run.remaining, forecasts=forecasts)
        decision = plan.next
        used = 0
        with run.decision(steps[0], plan, forecasts) as trace:
            if not decision.skipped:
                tokens_in, tokens_out = REAL[decision.option]
                used = tokens_in + min(tokens_out, decision.cap.tokens - tokens_in)
                trace.record(
                    Spend(input_tokens=tokens_in, output_tokens=used - tokens_in), success=1.0
                )
        return {
            "pending": state["pending"][1:],
            "log": [{"step": decision.step_id, "option": decision.option, "used": used}],
        }

    def route(state: State) -> str:
        return "act" if state["pending"] else END

    graph = StateGraph(State)
    graph.add_node("act", act)
    graph.add_edge(START, "act")
    graph.add_conditional_edges("act", route, ["act", END])
    return graph.compile()


def _start(n):
    return {
        "pending": [Step(id=f"s{i}", options=OPTIONS).model_dump() for i in range(n)],
        "log": [],
    }


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
async def test_langgraph_run_produces_nested_spans(mode):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    run = RunTrace(Budget(tokens=1200), run_id=mode, tracer_provider=provider)
    with tracer.start_as_current_span("agent.invoke") as outer, run:
        graph = _graph(run)
        if mode == "invoke":
            final = graph.invoke(_start(6))
        else:
            final = await graph.ainvoke(_start(6))
    spans = exporter.get_finished_spans()
    plan = next(s for s in spans if s.name == names.SPAN_PLAN)
    decisions = sorted(
        (s for s in spans if s.name == names.SPAN_DECISION), key=lambda s: s.start_time
    )
    assert plan.parent.span_id == outer.get_span_context().span_id
    assert [d.parent.span_id for d in decisions] == [plan.context.span_id] * 6
    assert [d.attributes[names.STEP_ID] for d in decisions] == [e["step"] for e in final["log"]]
    assert [d.attributes[names.OPTION] for d in decisions] == [e["option"] for e in final["log"]]
    for span, entry in zip(decisions, final["log"], strict=True):
        if entry["option"] != "skip":
            a = span.attributes
            assert (
                a[names.GEN_AI_USAGE_INPUT_TOKENS] + a[names.GEN_AI_USAGE_OUTPUT_TOKENS]
                == (entry["used"])
            )
    spent = sum(e["used"] for e in final["log"])
    assert plan.attributes[f"{names.SPENT}.tokens"] == spent <= 1200
    provider.shutdown()
