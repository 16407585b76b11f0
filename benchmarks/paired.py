"""Two ways of running ``ours``, compared episode by episode on the bench's episodes.

Run: ``.venv/bin/python benchmarks/paired.py --data FILE --a SPEC --b SPEC [--quantile-a Q]
[--quantile-b Q] [--risk-a R] [--risk-b R] [--guard success|cost|both] [--alpha A]
[--seed S]``. A ``SPEC`` is the bench's ``--predictor`` (``prior``, ``local:DIR``,
``vllm:URL@DIR``: composed with the prior as the bench composes it, or on its own with
``+alone``), with ``+online`` to feed it each step's outcome as ``roi-agents bench --online``
does (a learned predictor alone guarded by the prior; each budget starts from the fitted
predictor again). Both replay the same seeded episodes, and the script prints the mean
per-episode difference in value, a less b, at each budget with its paired standard error,
bootstrapped over the distinct test queries the episodes reuse: the bench's own figures come
with unpaired errors, too wide to tell a small change from noise. ``--budgets``,
``--episodes`` and ``--steps`` as the bench's.
Examples: ``--a local:DIR+online --b local:DIR`` (what learning online changes), ``--a
local:NEW --b local:OLD`` (two checkpoints), ``--a prior --quantile-a mean --b prior`` (two plan
quantiles), ``--a prior --risk-a run --b prior`` (risk over the run or per step), ``--a
local:DIR --policy-a policy.json --b prior`` (a tuned policy, its ``follow`` too, against the
prior).

It also prints what an online choice between the two would need: a run sees only one side per
episode, so telling them apart at two standard errors takes about ``4 (sd_a² + sd_b²) / d²``
episodes on each side, for a difference ``d`` and per-episode spreads ``sd``.

``--guard success`` (or ``cost``) lets the guard overrule that part alone, the other always
trusted, to tell which verdict a change comes from; ``--alpha`` sets the guard's level.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np

from roi_agents.allocate import Policy, Risk
from roi_agents.bench.simulate import (
    BenchConfig,
    Setup,
    _controller,
    _ours,
    _play,
    _query_bootstrap,
    _Run,
    _step,
    prepare,
    query_index,
    resamples,
)
from roi_agents.cli import _predictor_factory
from roi_agents.data import ReplayQuery, load_replay
from roi_agents.errors import InvalidValueError, RoiAgentsError
from roi_agents.predict.base import Learner
from roi_agents.predict.guard import GuardedPredictor
from roi_agents.types import Quantile, Step

ONLINE = "+online"
ALONE = "+alone"


@dataclass
class Side:
    """One way of running ``ours``: its prepared bench and whether it learns online."""

    name: str
    setup: Setup
    config: BenchConfig
    alpha: float
    steps: list[list[Step]]  # each episode's steps, as the bench builds them

    @classmethod
    def build(
        cls,
        spec: str,
        quantile: Quantile,
        risk: Risk,
        queries: list[ReplayQuery],
        base: BenchConfig,
        alpha: float,
    ) -> Side:
        predictor = spec.removesuffix(ONLINE)
        config = dataclasses.replace(
            base, quantile=quantile, risk=risk, online=spec.endswith(ONLINE)
        )
        name = spec if (quantile, risk) == ("p90", "step") else f"{spec} at {quantile}/{risk}"
        name += " by its policy" if base.policy is not None else ""
        factory = _predictor_factory(
            predictor.removesuffix(ALONE), composed=not predictor.endswith(ALONE)
        )
        setup = prepare(queries, config, predictor=factory)
        steps = [[_step(q, config.group_by, setup.prices) for q in ep] for ep in setup.episodes]
        return cls(name, setup, config, alpha, steps)

    def runs(self, fraction: float) -> list[_Run]:
        """Each episode played at budget ``fraction``."""
        setup, resource = self.setup, self.setup.resource
        model = setup.fit() if self.config.online else setup.predictor
        if isinstance(model, GuardedPredictor):
            model.alpha = self.alpha
        learner = model if self.config.online and isinstance(model, Learner) else None
        decide = _ours(_controller(model, resource, self.config), resource)
        return [
            _play(episode, steps, fraction * full, resource, decide, learner)
            for episode, steps, full in zip(setup.episodes, self.steps, setup.full, strict=True)
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a replay file")
    parser.add_argument("--a", required=True, help="SPEC[+alone][+online]: the first side")
    parser.add_argument("--b", required=True, help="SPEC[+alone][+online]: the side it less")
    quantiles = get_args(Quantile)
    parser.add_argument("--quantile-a", choices=quantiles, default="p90")
    parser.add_argument("--quantile-b", choices=quantiles, default="p90")
    parser.add_argument("--risk-a", choices=get_args(Risk), default="step")
    parser.add_argument("--risk-b", choices=get_args(Risk), default="step")
    parser.add_argument("--policy-a", type=Path, help="a policy.json for a (as bench --policy)")
    parser.add_argument("--policy-b", type=Path, help="a policy.json for b")
    parser.add_argument("--guard", choices=["success", "cost", "both"], default="both")
    parser.add_argument("--alpha", type=float, default=0.01, help="the guard's alpha")
    parser.add_argument("--seed", type=int, default=0, help="the split's and episodes' seed")
    parser.add_argument("--budgets", default="0.1,0.25,0.5", help="comma-separated fractions")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per budget")
    parser.add_argument("--steps", type=int, default=30, help="steps per episode")
    args = parser.parse_args()
    try:
        compare(args)
    except RoiAgentsError as error:
        raise SystemExit(f"error: {error}") from None


def compare(args: argparse.Namespace) -> None:
    """Play both sides on the same episodes; print the paired difference per budget."""
    if not 0 < args.alpha < 1:
        raise InvalidValueError("alpha", f"must be in (0, 1), got {args.alpha}")
    if args.guard != "both":
        judged = GuardedPredictor._trusted
        GuardedPredictor._trusted = (  # type: ignore[method-assign]
            lambda self, option, group, part: (
                part != args.guard or judged(self, option, group, part)
            )
        )
    try:
        budgets = tuple(float(x) for x in args.budgets.split(","))
    except ValueError:
        raise InvalidValueError("budgets", f"expected numbers, got {args.budgets!r}") from None
    base = BenchConfig(budgets=budgets, episodes=args.episodes, steps=args.steps, seed=args.seed)
    base.validate()
    queries = load_replay(args.data)
    a, b = (
        Side.build(
            spec,
            quantile,
            risk,
            queries,
            dataclasses.replace(base, policy=None if policy is None else Policy.load(policy)),
            args.alpha,
        )
        for spec, quantile, risk, policy in (
            (args.a, args.quantile_a, args.risk_a, args.policy_a),
            (args.b, args.quantile_b, args.risk_b, args.policy_b),
        )
    )
    ids = [[[q.query_id for q in episode] for episode in side.setup.episodes] for side in (a, b)]
    if ids[0] != ids[1]:
        raise SystemExit("the two sides drew different episodes; nothing to pair")
    # Episodes reuse the test queries: the error is bootstrapped over them, paired.
    where, n = query_index(a.setup.episodes)
    resample = resamples(n, [args.seed, 2])  # the bench's
    print(
        f"{args.data.name}: {a.name} - {b.name}, value per episode "
        f"({len(where)} episodes of {base.steps} steps on {n} distinct test queries; ± "
        "bootstrapped over them)"
    )
    for fraction in budgets:
        runs = a.runs(fraction), b.runs(fraction)
        values = np.array([[r.value for r in side] for side in runs]).T
        difference = float(values[:, 0].mean() - values[:, 1].mean())
        boot = _query_bootstrap(runs[0], where, resample) - _query_bootstrap(
            runs[1], where, resample
        )
        se = float(np.std(boot, ddof=1))
        spreads = values.std(axis=0, ddof=1)
        if abs(difference) < 1e-12:
            online = "no difference to tell apart"
        else:
            needed = 4 * float(spreads @ spreads) / difference**2
            online = f"an online choice needs ~{needed:,.0f} episodes a side"
        print(
            f"  budget {fraction:g}: {difference:+.3f} ± {se:.3f} "
            f"(a {values[:, 0].mean():.2f} sd {spreads[0]:.2f}, "
            f"b {values[:, 1].mean():.2f} sd {spreads[1]:.2f}); {online}"
        )


if __name__ == "__main__":
    main()
