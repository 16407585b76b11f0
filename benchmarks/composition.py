"""The prior, the learned checkpoint alone and the two composed, on the same bench episodes.

Run: ``.venv/bin/python benchmarks/composition.py --data FILE --checkpoint DIR [--split
dataset] [--online] [--seed S] [--json OUT]``. ``--split dataset`` benches on the datasets
(subjects) that ``roi-agents train --split dataset`` held out with the same seed, the prior
learning them from the first half of their queries (`roi_agents.bench.simulate.split_queries`).

For each predictor (``prior``; ``alone``: the checkpoint's own forecasts, guarded by the prior
with ``--online`` as ``roi-agents bench`` does; ``composed``: `ComposedPredictor`, the prior's
level moved per step by the checkpoint) it runs the whole bench and prints, per budget, ours'
value per episode, its gap closed and steps cut off per episode; then ``composed`` less each of
the others, per episode on the same episodes, with its paired standard error.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from roi_agents.bench.simulate import (
    BenchConfig,
    _controller,
    _ours,
    _play,
    _step,
    fit_composed,
    prepare,
    run_bench,
)
from roi_agents.cli import _learned
from roi_agents.data import load_replay
from roi_agents.predict.base import Learner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--checkpoint", required=True, help="a trained checkpoint folder")
    parser.add_argument("--split", choices=["query", "dataset"], default="query")
    parser.add_argument("--online", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--json", type=Path, help="write the table here")
    args = parser.parse_args()
    queries = load_replay(args.data)
    config = BenchConfig(
        seed=args.seed, online=args.online, split=args.split, episodes=args.episodes
    )
    learned = _learned(f"local:{args.checkpoint}")
    factories = {
        "prior": None,
        "alone": lambda train: learned,
        "composed": fit_composed(learned, config.group_by),
    }
    table: dict[str, dict[str, dict[str, float]]] = {}
    values: dict[str, dict[float, np.ndarray]] = {}
    for name, factory in factories.items():
        started = time.perf_counter()
        result = run_bench(queries, config, predictor=factory)
        setup = prepare(queries, config, predictor=factory)
        steps = [[_step(q, config.group_by, setup.prices) for q in ep] for ep in setup.episodes]
        values[name] = {}
        for fraction, policies in result.budgets.items():
            ours = policies["ours"]
            table.setdefault(f"{fraction:g}", {})[name] = {
                "value": ours.value,
                "gap_closed": ours.gap_closed,
                "gap_closed_all": ours.gap_closed_all,
                "truncated": ours.truncated,
                "overruns": ours.overruns,
            }
            model = setup.fit() if config.online else setup.predictor
            learner = model if config.online and isinstance(model, Learner) else None
            decide = _ours(_controller(model, setup.resource, config), setup.resource)
            values[name][fraction] = np.array(
                [
                    _play(ep, st, fraction * full, setup.resource, decide, learner).value
                    for ep, st, full in zip(setup.episodes, steps, setup.full, strict=True)
                ]
            )
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    label = ", ".join(p.name for p in args.data)
    mode = f"split by {args.split}" + (", online" if args.online else "")
    print(f"{label} ({mode}, seed {args.seed}); checkpoint {args.checkpoint}")
    for fraction in config.budgets:
        row = table[f"{fraction:g}"]
        cells = "  ".join(
            f"{name} {r['value']:.2f} (gap {r['gap_closed']:+.2f}, cut {r['truncated']:.2f})"
            for name, r in row.items()
        )
        print(f"  budget {fraction:g}: {cells}")
        for other in ("prior", "alone"):
            d = values["composed"][fraction] - values[other][fraction]
            se = d.std(ddof=1) / math.sqrt(len(d))
            row[f"composed - {other}"] = {"mean": float(d.mean()), "se": float(se)}
            print(f"    composed - {other}: {d.mean():+.3f} ± {se:.3f}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
