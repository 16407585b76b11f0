"""How sharp must success forecasts be for the bench's gap to close? A what-if on real outcomes.

Run: ``.venv/bin/python benchmarks/gap_ceiling.py --data FILE [--costs prior|recorded]``.

The learned predictor is judged by ``roi-agents bench``: the share of the gap between the best
predictor-free policy and the clairvoyant oracle that it closes. This script asks what that
share would be for predictors of a given success AUC, all else equal. For every test query and
option it draws a signal ``s * (2y - 1) + N(0, 1)`` from the recorded outcome ``y`` (the score
rounded to 0 or 1; noise independent across options), and forecasts the exactly calibrated
``p(y = 1 | signal)`` with the option's base rate from the training part. Its AUC among the
rows of one option is ``Phi(s * sqrt(2))`` (pooled over options it is higher, as options differ
in their base rates). Costs come from the grouped prior fitted on the training part, as in the
bench's default, or with ``--costs recorded`` are known exactly (what cost forecasts add).
Everything else is the bench: same split, episodes, budgets and controller.

The result reads against a checkpoint's AUC within each option on the same test queries, which
``benchmarks/routing_gain.py --data FILE --checkpoint DIR`` prints.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from roi_agents.bench.simulate import BenchConfig, choose_resource, fit_prior, run_bench
from roi_agents.data import load_replay
from roi_agents.data.replay import ReplayQuery
from roi_agents.predict.base import Predictor
from roi_agents.types import CostForecast, Forecast, Resource, Step

AUCS = (0.60, 0.70, 0.80, 0.90, 0.95)


def _separation(auc: float) -> float:
    """The ``s`` whose signal has this AUC: ``Phi(s * sqrt(2)) = auc``."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(auc) / math.sqrt(2)


class _Sharpened:
    """The prior's forecasts with success drawn from the outcomes (and costs, when given)."""

    def __init__(
        self,
        prior: Predictor,
        p_success: dict[tuple[str, str], float],
        costs: dict[tuple[str, str], float] | None,
        resource: Resource,
    ) -> None:
        self._prior = prior
        self._p = p_success
        self._costs = costs
        self._resource = resource

    def predict(self, steps: Sequence[Step]) -> list[Forecast]:
        out = []
        for f in self._prior.predict(steps):
            key = f.step_id, f.option
            update: dict[str, object] = {"p_success": self._p[key]}
            if self._costs is not None:
                update[self._resource] = CostForecast.exact(self._costs[key])
            out.append(f.model_copy(update=update))
        return out

    async def apredict(self, steps: Sequence[Step]) -> list[Forecast]:
        return self.predict(steps)


def _sharpened(
    queries: list[ReplayQuery], auc: float, seed: int, recorded_costs: bool
) -> Callable[[list[ReplayQuery]], Predictor]:
    s = _separation(auc)
    resource = choose_resource(queries)
    costs = {
        (q.query_id, name): r.cost(resource) or 0.0
        for q in queries
        for name, r in q.outcomes.items()
    }
    rng = np.random.default_rng(seed)
    # The signal of every query, test ones included: the predictor only ever asks for those.
    signals = {
        (q.query_id, name): s * (2 * round(r.score) - 1) + float(rng.normal())
        for q in queries
        for name, r in q.outcomes.items()
    }

    def build(train: list[ReplayQuery]) -> Predictor:
        rates: dict[str, list[float]] = {}
        for q in train:
            for name, r in q.outcomes.items():
                rates.setdefault(name, []).append(round(r.score))
        rate = {name: min(max(float(np.mean(v)), 1e-3), 1 - 1e-3) for name, v in rates.items()}
        prior_logit = {name: math.log(r / (1 - r)) for name, r in rate.items()}
        p = {
            key: 1 / (1 + math.exp(-(prior_logit[key[1]] + 2 * s * signal)))
            for key, signal in signals.items()
        }
        return _Sharpened(fit_prior(True)(train), p, costs if recorded_costs else None, resource)

    return build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", default="0.1,0.25,0.5")
    parser.add_argument("--costs", choices=("prior", "recorded"), default="prior")
    args = parser.parse_args()
    queries = load_replay(args.data)
    config = BenchConfig(budgets=tuple(float(b) for b in args.budgets.split(",")), seed=args.seed)
    title = f"{args.data.name}: gap closed by success forecasts of a given AUC, {args.costs} costs"
    table = Table(title=title)
    table.add_column("AUC within an option", justify="right")
    for budget in config.budgets:
        table.add_column(f"gap closed @ {budget:g}", justify="right")
    table.add_column(f"PGR @ {config.budgets[-1]:g}", justify="right")
    for auc in AUCS:
        result = run_bench(
            queries, config, predictor=_sharpened(queries, auc, args.seed, args.costs == "recorded")
        )
        ours = [result.budgets[b]["ours"] for b in config.budgets]
        table.add_row(f"{auc:.2f}", *(f"{o.gap_closed:.2f}" for o in ours), f"{ours[-1].pgr:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
