"""Helpers shared by the tests that talk to a real vLLM server or load the examples."""

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


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


def load_example(name: str) -> ModuleType:
    """Import examples/NAME.py as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
