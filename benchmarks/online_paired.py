"""What learning online changes, episode by episode: ours offline against ours with ``--online``.

Run: ``.venv/bin/python benchmarks/online_paired.py --data FILE [--predictor SPEC] [--guard
success|cost|both] [--alpha A]``. Replays ``ours`` on the bench's seeded episodes twice, as
``roi-agents bench`` and as ``roi-agents bench --online`` (a learned predictor guarded by the
prior), and prints the mean per-episode difference in value at each budget with its paired
standard error: the bench's own figures come with unpaired errors, too wide to tell a small
change from noise. ``--guard success`` (or ``cost``) lets the guard overrule that part alone, the
other always trusted, to tell which verdict a change comes from; ``--alpha`` sets the guard's
level."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from roi_agents.bench.simulate import BenchConfig, _controller, _ours, _play, _step, prepare
from roi_agents.cli import _predictor_factory
from roi_agents.data import load_replay
from roi_agents.predict.base import Learner
from roi_agents.predict.guard import GuardedPredictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--predictor", default="prior", help="as the bench's --predictor")
    parser.add_argument("--guard", choices=["success", "cost", "both"], default="both")
    parser.add_argument("--alpha", type=float, default=0.01, help="the guard's alpha")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.guard != "both":
        judged = GuardedPredictor._trusted
        GuardedPredictor._trusted = (  # type: ignore[method-assign]
            lambda self, option, group, part: (
                part != args.guard or judged(self, option, group, part)
            )
        )
    queries = load_replay(args.data)
    factory = _predictor_factory(args.predictor)
    offline = BenchConfig(seed=args.seed)
    online = BenchConfig(seed=args.seed, online=True)
    setup = prepare(queries, offline, predictor=factory)
    learning = prepare(queries, online, predictor=factory)
    resource = setup.resource
    steps = [[_step(q, True, setup.prices) for q in episode] for episode in setup.episodes]
    guard = f"guarding {args.guard} at alpha {args.alpha:g}"
    print(f"{args.data.name}, {args.predictor}, {guard}: online - offline value")
    for fraction in offline.budgets:
        model = learning.fit()
        if isinstance(model, GuardedPredictor):
            model.alpha = args.alpha
        before = _ours(_controller(setup.predictor, resource, offline), resource)
        after = _ours(_controller(model, resource, online), resource)
        learner = model if isinstance(model, Learner) else None
        values = np.array(
            [
                (
                    _play(episode, episode_steps, fraction * full, resource, after, learner).value,
                    _play(episode, episode_steps, fraction * full, resource, before).value,
                )
                for episode, episode_steps, full in zip(
                    setup.episodes, steps, setup.full, strict=True
                )
            ]
        )
        differences = values[:, 0] - values[:, 1]
        se = differences.std(ddof=1) / math.sqrt(len(differences))
        print(
            f"  budget {fraction:g}: {differences.mean():+.3f} ± {se:.3f} per episode "
            f"(value {values[:, 0].mean():.2f} online, {values[:, 1].mean():.2f} offline)"
        )


if __name__ == "__main__":
    main()
