"""A real trace UI: a budgeted agent's run exported over OTLP to Arize Phoenix and read back.

Phoenix runs from its own virtualenv (``make phoenix``), on free loopback ports, with SQLite in
a temporary folder; the spans are read back through its REST API, as a platform team's tools
would read them.
"""

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from live import ROOT, served

from roi_agents.telemetry import names

pytestmark = pytest.mark.integration

PHOENIX = ROOT / ".venv-phoenix" / "bin" / "phoenix"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    """Phoenix's base URL, healthy; its log is printed if it never gets there."""
    if not PHOENIX.exists():
        pytest.fail(f"no Arize Phoenix at {PHOENIX}: run `make phoenix`")
    folder = tmp_path_factory.mktemp("phoenix")
    port = _free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(folder),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(_free_port()),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = (folder / "phoenix.log").open("wb")
    process = subprocess.Popen(
        [str(PHOENIX), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                text = (folder / "phoenix.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"Phoenix did not come up (exit {process.poll()}):\n{text}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _spans(url: str, project: str, expected: int) -> list[dict]:
    """The project's spans, once ``expected`` have arrived (ingestion is asynchronous)."""
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(f"{url}/v1/projects/{project}/spans", params={"limit": 1000})
        spans = response.json()["data"] if response.status_code == 200 else []
        if len(spans) >= expected or time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


def _seconds(span: dict) -> float:
    start = datetime.fromisoformat(span["start_time"])
    return (datetime.fromisoformat(span["end_time"]) - start).total_seconds()


def test_a_budgeted_agent_run_is_one_trace_in_phoenix(phoenix, tiny_chat_server):
    project = f"roi-{uuid.uuid4().hex[:8]}"
    thread = uuid.uuid4().hex
    before = served(tiny_chat_server)
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("phoenix_agent.py")),
            tiny_chat_server.base_url,
            phoenix,
            project,
            thread,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    server_counted = served(tiny_chat_server) - before
    steps = len(report["decisions"])
    spans = _spans(phoenix, project, expected=1 + steps + steps)

    # One run, one trace: a roi.plan root, one roi.decision child per step.
    assert len({s["context"]["trace_id"] for s in spans}) == 1
    (plan,) = [s for s in spans if s["name"] == names.SPAN_PLAN]
    decisions = [s for s in spans if s["name"] == names.SPAN_DECISION]
    assert plan["parent_id"] is None
    assert len(decisions) == steps == 3
    assert {d["parent_id"] for d in decisions} == {plan["context"]["span_id"]}
    assert plan["span_kind"] == "CHAIN"
    assert plan["attributes"]["session.id"] == plan["attributes"][names.RUN_ID]
    assert thread in plan["attributes"][names.RUN_ID]

    # Every call's tokens as the server counted them, in Phoenix's own fields too.
    calls = [d for d in decisions if d["attributes"][names.OPTION] != "skip"]
    assert calls
    traced = sum(
        d["attributes"]["llm.token_count.prompt"] + d["attributes"]["llm.token_count.completion"]
        for d in calls
    )
    assert traced == server_counted == plan["attributes"][f"{names.SPENT}.tokens"]
    for call in calls:
        a = call["attributes"]
        assert call["span_kind"] == "LLM"
        assert a["llm.model_name"] == "tiny"
        assert _seconds(call) > 0  # from the reservation to the charge: the real call
        tokens_in, tokens_out = a["llm.token_count.prompt"], a["llm.token_count.completion"]
        assert a[names.GEN_AI_USAGE_COST_AMOUNT] == pytest.approx(
            (tokens_in * 1.0 + tokens_out * 4.0) / 1e6
        )
        assert a[names.GEN_AI_USAGE_COST_CURRENCY] == "USD"
    assert report["spent"]["usd"] == pytest.approx(
        sum(c["attributes"][names.GEN_AI_USAGE_COST_AMOUNT] for c in calls)
    )
    # The model call's own span (OpenInference's OpenAI instrumentation) nests under its
    # decision, and its counts are the decision's.
    by_id = {d["context"]["span_id"]: d for d in calls}
    completions = [s for s in spans if s["parent_id"] in by_id]
    assert len(completions) == len(calls)
    for completion in completions:
        decision = by_id[completion["parent_id"]]["attributes"]
        a = completion["attributes"]
        assert completion["span_kind"] == "LLM"
        assert a["llm.token_count.prompt"] == decision["llm.token_count.prompt"]
        assert a["llm.token_count.completion"] == decision["llm.token_count.completion"]
        sent = json.loads(a["llm.invocation_parameters"])  # what it was sent with: the cap
        cap = sent.get("max_completion_tokens", sent.get("max_tokens"))
        assert cap == decision[names.GEN_AI_REQUEST_MAX_TOKENS]
