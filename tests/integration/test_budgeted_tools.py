"""BudgetedToolNode in a real LangGraph graph with real tools."""

from typing import Annotated

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from roi_agents_langgraph import BudgetedToolNode, BudgetState

from roi_agents import Budget

pytestmark = pytest.mark.integration

RAN: list[str] = []


@tool
def lookup(query: str) -> str:
    """Look something up."""
    RAN.append(query)  # ToolNode runs a turn's calls in parallel: compare sorted
    return f"found {query}"


class State(BudgetState):
    messages: Annotated[list, add_messages]


def _graph():
    def ask(state: State) -> dict:
        # The turn's tool calls, as a model would request them.
        calls = [
            {
                "name": "lookup",
                "args": {"query": f"q{k}"},
                "id": f"call-{len(RAN)}-{k}",
                "type": "tool_call",
            }
            for k in range(3)
        ]
        return {"messages": [AIMessage(content="", tool_calls=calls)]}

    graph = StateGraph(State)
    graph.add_node("ask", ask)
    graph.add_node("tools", BudgetedToolNode([lookup]))
    graph.add_edge(START, "ask")
    graph.add_edge("ask", "tools")
    graph.add_edge("tools", END)
    return graph.compile()


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
async def test_tool_calls_beyond_the_allowance_are_refused_and_never_run(mode):
    RAN.clear()
    graph = _graph()
    start = {"budget": Budget(tool_calls=2).model_dump(), "messages": []}
    final = graph.invoke(start) if mode == "invoke" else await graph.ainvoke(start)
    tool_messages = [m for m in final["messages"] if isinstance(m, ToolMessage)]
    assert sorted(RAN) == ["q0", "q1"]
    assert [m.status for m in tool_messages] == ["success", "success", "error"]
    assert "Refused" in tool_messages[2].content
    assert final["spent"]["tool_calls"] == 2
    # The next turn has no allowance left: every call is refused, none runs.
    again = graph.invoke({**final})
    new = [m for m in again["messages"] if isinstance(m, ToolMessage)][3:]
    assert sorted(RAN) == ["q0", "q1"]
    assert [m.status for m in new] == ["error"] * 3
    assert again["spent"]["tool_calls"] == 2


def test_unlimited_tool_calls_all_run():
    RAN.clear()
    final = _graph().invoke({"budget": Budget(tokens=100).model_dump(), "messages": []})
    assert sorted(RAN) == ["q0", "q1", "q2"]
    assert final["spent"]["tool_calls"] == 3


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
async def test_with_the_controller_tool_calls_are_reserved_in_the_run_and_never_overrun(mode):
    """Two turns of 3 calls each under an allowance of 4: the second turn gets the 1 left."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from roi_agents_langgraph import BudgetControllerNode

    from roi_agents import Controller
    from roi_agents.telemetry import names

    RAN.clear()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    control = BudgetControllerNode(Controller(), tracer_provider=provider)
    node = BudgetedToolNode([lookup], control=control)

    def ask(state: State) -> dict:
        calls = [
            {"name": "lookup", "args": {"query": f"q{len(RAN)}-{k}"}, "id": f"c{len(RAN)}-{k}"}
            for k in range(3)
        ]
        return {"messages": [AIMessage(content="", tool_calls=calls)]}

    graph = StateGraph(State)
    graph.add_node("ask", ask)
    graph.add_node("tools", node)
    graph.add_node("ask_again", ask)
    graph.add_node("tools_again", node)
    graph.add_edge(START, "ask")
    graph.add_edge("ask", "tools")
    graph.add_edge("tools", "ask_again")
    graph.add_edge("ask_again", "tools_again")
    graph.add_edge("tools_again", END)
    compiled = graph.compile()
    start = {"budget": Budget(tool_calls=4).model_dump(), "messages": [], "scope": "run/tools"}
    final = compiled.invoke(start) if mode == "invoke" else await compiled.ainvoke(start)
    refused = [m for m in final["messages"] if isinstance(m, ToolMessage) and m.status == "error"]
    assert len(RAN) == 4
    assert len(refused) == 2
    report = control.session(start).report()
    assert report.committed.tool_calls == report.spent.tool_calls == 4
    assert report.reserved.tool_calls == 0
    # Each turn is a decision of its own, a TOOL span spanning the calls, charged what ran.
    control.session(start).finish()
    spans = exporter.get_finished_spans()
    (plan,) = [s for s in spans if s.name == names.SPAN_PLAN]
    turns = sorted((s for s in spans if s.name == names.SPAN_DECISION), key=lambda s: s.start_time)
    assert [t.attributes[names.ACTUAL_TOOL_CALLS] for t in turns] == [3, 1]
    assert [t.attributes[f"{names.CAP}.tool_calls"] for t in turns] == [3, 1]
    for turn in turns:
        a = turn.attributes
        assert a[names.OPTION] == names.OPTION_TOOLS
        assert a[names.OPENINFERENCE_SPAN_KIND] == "TOOL"
        assert a[names.GEN_AI_OPERATION_NAME] == "execute_tool"
        assert a[names.GEN_AI_TOOL_NAME] == "lookup"
        assert turn.parent.span_id == plan.context.span_id
        assert turn.end_time > turn.start_time
    assert plan.attributes[f"{names.SPENT}.tool_calls"] == 4
    # The two calls past the allowance are said on the run's span.
    (refused_event,) = [e for e in plan.events if e.name == names.EVENT_REFUSED]
    assert refused_event.attributes[names.RESOURCE] == "tool_calls"
    assert refused_event.attributes["roi.requested"] == 3
    assert refused_event.attributes["roi.limit"] == 1
    provider.shutdown()
