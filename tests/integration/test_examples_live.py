"""The LangGraph examples, run against the real vLLM server (a runaway model)."""

import pytest
from live import load_example

pytestmark = pytest.mark.integration


def test_research_assistant(tiny_chat_server, capsys):
    report = load_example("research_assistant").main(
        tiny_chat_server.base_url, "tiny", 900, extra_body={"ignore_eos": True}
    )
    printed = capsys.readouterr().out
    assert report["steps"] == 5
    assert report["steps"] - report["skipped"] >= 1
    assert report["spent"]["input_tokens"] + report["spent"]["output_tokens"] <= 900
    assert "of 900 tokens" in printed
    assert {d["option"] for d in report["decisions"]} <= {"quick", "standard", "thorough", "skip"}


def test_tool_agent(tiny_chat_server, capsys):
    module = load_example("tool_agent")
    report = module.main(tiny_chat_server.base_url, "tiny", 800, 3, extra_body={"ignore_eos": True})
    assert report["spent"]["input_tokens"] + report["spent"]["output_tokens"] <= 800
    assert report["spent"]["tool_calls"] <= 3
    assert len(module.CALLS) == report["spent"]["tool_calls"]
    assert report["steps"] - report["skipped"] >= 1  # the model was really called
    assert "tool calls" in capsys.readouterr().out
