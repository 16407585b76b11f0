"""How sharp must success forecasts be for the bench's gap to close? A what-if on real outcomes.

Run: ``.venv/bin/python benchmarks/gap_ceiling.py --data FILE [--costs prior|recorded]
[--signal option|query]``.

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

Noise independent across options tells a forecast which option of a query succeeds as sharply as
whether one does: it overstates what a real predictor's AUC buys, since what makes a question
hard for one model mostly makes it hard for the others. ``--signal query`` draws one signal per
query instead, ``s * (2v - 1) + N(0, 1)`` from the share ``v`` of its options that succeed, and
forecasts each option's exactly calibrated ``p(y = 1 | signal)`` from the training part's counts of
``(y, v)``: a forecast that knows how hard a query is and nothing about which option suits it.
``s`` is set so that the signal's AUC within an option, averaged over the options, is the row's
(exact on the training part: ``Phi(sqrt(2) s (v - v'))`` over its pairs); a row beyond what the
share can rank (``s`` without bound) says so.

The result reads against a checkpoint's AUC within each option on the same test queries, which
``benchmarks/routing_gain.py --data FILE --checkpoint DIR`` prints.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import NormalDist

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
    return NormalDist().inv_cdf(auc) / math.sqrt(2)


# Per option, per share of the query's options that succeed, how many queries it failed and
# succeeded on.
Counts = dict[str, dict[float, list[int]]]


def _share(query: ReplayQuery) -> float:
    """The share of the query's options that succeed (scores rounded to 0 or 1)."""
    return float(np.mean([round(r.score) for r in query.outcomes.values()]))


def _counts(train: list[ReplayQuery]) -> Counts:
    counts: Counts = {}
    for q in train:
        v = _share(q)
        for name, r in q.outcomes.items():
            counts.setdefault(name, {}).setdefault(v, [0, 0])[round(r.score)] += 1
    return counts


def _query_auc(counts: Counts, s: float) -> float:
    """The query signal's AUC within an option, averaged over the options (ties count half)."""
    aucs = []
    for by_share in counts.values():
        shares = sorted(by_share)
        failed = np.array([by_share[v][0] for v in shares], dtype=float)
        succeeded = np.array([by_share[v][1] for v in shares], dtype=float)
        if failed.sum() == 0 or succeeded.sum() == 0:
            continue
        gap = np.subtract.outer(shares, shares)  # succeeded's share less failed's
        if math.isinf(s):
            wins = np.where(gap > 0, 1.0, np.where(gap == 0, 0.5, 0.0))
        else:
            wins = np.vectorize(NormalDist().cdf)(math.sqrt(2) * s * gap)
        aucs.append(float(succeeded @ wins @ failed / (succeeded.sum() * failed.sum())))
    return float(np.mean(aucs))


def _query_separation(counts: Counts, auc: float) -> float | None:
    """The ``s`` of a query signal with this AUC, by bisection; ``None`` beyond its reach."""
    if _query_auc(counts, math.inf) <= auc:
        return None
    low, high = 0.0, 1.0
    while _query_auc(counts, high) < auc:
        low, high = high, 2 * high
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if _query_auc(counts, middle) < auc else (low, middle)
    return (low + high) / 2


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
    queries: list[ReplayQuery], auc: float, seed: int, recorded_costs: bool, signal: str
) -> Callable[[list[ReplayQuery]], Predictor]:
    """The bench's predictor factory, for forecasts of this AUC.

    Its predictor raises `_BeyondReach` where a query signal cannot reach the AUC.
    """
    resource = choose_resource(queries)
    costs = {
        (q.query_id, name): r.cost(resource) or 0.0
        for q in queries
        for name, r in q.outcomes.items()
    }
    rng = np.random.default_rng(seed)
    # The noise of every query, test ones included: the predictor only ever asks for those.
    noise = {(q.query_id, name): float(rng.normal()) for q in queries for name in q.outcomes}
    query_noise = {q.query_id: float(rng.normal()) for q in queries}

    def by_option(train: list[ReplayQuery]) -> dict[tuple[str, str], float]:
        s = _separation(auc)
        rates: dict[str, list[float]] = {}
        for q in train:
            for name, r in q.outcomes.items():
                rates.setdefault(name, []).append(round(r.score))
        rate = {name: min(max(float(np.mean(v)), 1e-3), 1 - 1e-3) for name, v in rates.items()}
        p = {}
        for q in queries:
            for name, r in q.outcomes.items():
                z = s * (2 * round(r.score) - 1) + noise[q.query_id, name]
                p[q.query_id, name] = 1 / (
                    1 + math.exp(-(math.log(rate[name] / (1 - rate[name])) + 2 * s * z))
                )
        return p

    def by_query(train: list[ReplayQuery]) -> dict[tuple[str, str], float]:
        counts = _counts(train)
        s = _query_separation(counts, auc)
        if s is None:
            raise _BeyondReach(_query_auc(counts, math.inf))
        p = {}
        for q in queries:
            z = s * (2 * _share(q) - 1) + query_noise[q.query_id]
            for name in q.outcomes:
                found = counts.get(name, {})
                weight = {v: math.exp(-((z - s * (2 * v - 1)) ** 2) / 2) for v in found}
                total = sum(w * sum(found[v]) for v, w in weight.items())
                succeeded = sum(w * found[v][1] for v, w in weight.items())
                p[q.query_id, name] = succeeded / total if total > 0 else 0.5
        return p

    def build(train: list[ReplayQuery]) -> Predictor:
        p = by_option(train) if signal == "option" else by_query(train)
        return _Sharpened(fit_prior(True)(train), p, costs if recorded_costs else None, resource)

    return build


class _BeyondReach(Exception):
    """A query signal cannot reach the asked AUC: its share of successes ranks no sharper."""

    def __init__(self, most: float) -> None:
        super().__init__(f"at most {most:.3f}")
        self.most = most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", default="0.1,0.25,0.5")
    parser.add_argument("--costs", choices=("prior", "recorded"), default="prior")
    parser.add_argument("--signal", choices=("option", "query"), default="option")
    args = parser.parse_args()
    queries = load_replay(args.data)
    config = BenchConfig(budgets=tuple(float(b) for b in args.budgets.split(",")), seed=args.seed)
    title = (
        f"{args.data.name}: gap closed by success forecasts of a given AUC, {args.costs} costs, "
        f"one signal per {args.signal}"
    )
    table = Table(title=title)
    table.add_column("AUC within an option", justify="right")
    for budget in config.budgets:
        table.add_column(f"gap closed @ {budget:g}", justify="right")
    table.add_column(f"PGR @ {config.budgets[-1]:g}", justify="right")
    for auc in AUCS:
        factory = _sharpened(queries, auc, args.seed, args.costs == "recorded", args.signal)
        try:
            result = run_bench(queries, config, predictor=factory)
        except _BeyondReach as beyond:
            reach = f"beyond reach: the share ranks at AUC {beyond.most:.3f} at most"
            table.add_row(f"{auc:.2f}", reach, *[""] * len(config.budgets))
            continue
        ours = [result.budgets[b]["ours"] for b in config.budgets]
        table.add_row(f"{auc:.2f}", *(f"{o.gap_closed:.2f}" for o in ours), f"{ours[-1].pgr:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
