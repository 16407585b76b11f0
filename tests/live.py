"""Helpers shared by the tests that talk to a real vLLM server or load the examples.

`benchmarks/adherence/` uses them too: the same model and ground truth.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]

_METRIC = re.compile(r"^vllm:(prompt|generation)_tokens_total\{[^}]*\} ([0-9.e+]+)$", re.M)
_REQUESTS = re.compile(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", re.M)


def served(server) -> int:
    """Prompt plus generated tokens the server has counted since it started (its /metrics)."""
    import httpx

    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return int(sum(float(v) for _, v in _METRIC.findall(text)))


def answered(server) -> int:
    """Requests the server has finished since it started, for any reason (its /metrics)."""
    import httpx

    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return int(sum(float(v) for v in _REQUESTS.findall(text)))


def four_tools():
    """Four tool schemas of the kind agents carry; the tiny model's template renders them."""
    from langchain_core.tools import tool

    @tool
    def search(query: str) -> str:
        """Search the web for pages about the query and return their titles and first lines."""
        return "no results"

    @tool
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression with + - * / and parentheses, exactly."""
        return "0"

    @tool
    def weather(city: str, days: int) -> str:
        """The weather forecast for a city over the next days, with temperatures and rain."""
        return "sunny"

    @tool
    def send_email(to: str, subject: str, body: str) -> str:
        """Send an email to one address with a subject and a plain-text body."""
        return "sent"

    return [search, calculator, weather, send_email]


def runaway_chat(server, *, async_client=None):
    """ChatOpenAI on the tiny model; ignore_eos makes it never stop on its own."""
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=server.base_url,
        api_key="unused",
        model="tiny",
        extra_body={"ignore_eos": True},
        max_retries=0,
        timeout=120,
        http_async_client=async_client,
    )


def build_checkpoint(script: str, folder: Path) -> Path:
    """Run one of tests/integration/build_*.py with the vLLM venv's Python into ``folder``."""
    from roi_agents_vllm import vllm_python

    builder = ROOT / "tests" / "integration" / script
    subprocess.run(
        [str(vllm_python()), str(builder), str(folder)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return folder


def load_example(name: str, folder: str = "examples") -> ModuleType:
    """Import FOLDER/NAME.py (a path under the project's root) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
