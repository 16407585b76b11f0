"""Does a predictor know where an upgrade pays? Realised gain of its top-ranked upgrades.

Run: ``.venv/bin/python benchmarks/routing_gain.py --data FILE [--checkpoint DIR] [--seed S]``.
On the test queries of the bench's split (same seed and training fraction), for every pair of
options (cheap, dear) ordered by their mean recorded cost, the queries are ranked by the
predicted gain ``p(dear) - p(cheap)`` and by ``-p(cheap)`` (upgrade where the cheap option is
expected to fail); the table gives the mean recorded gain ``score(dear) - score(cheap)`` of the
top 5%, 10%, 25% and 50%, against every query (what a random choice of upgrades gets) and the
clairvoyant ranking. The grouped prior predicts the same for every query of a dataset (an MMLU
subject), so it ranks datasets, not queries: a learned predictor earns its keep where it ranks
better than the prior does. Last, the success AUC among each option's test rows, and within
each group (dataset, subject).
"""

from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from roi_agents import Option, Step
from roi_agents.bench.simulate import fit_prior, split_queries
from roi_agents.data import load_replay
from roi_agents.predict import LocalPredictor
from roi_agents.train.metrics import auc

SHARES = (0.05, 0.10, 0.25, 0.50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint (else the prior)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-fraction", type=float, default=0.5)
    args = parser.parse_args()
    train, test = split_queries(load_replay(args.data), args.train_fraction, args.seed)
    steps = [
        Step(
            id=q.query_id,
            text=q.text,
            group=q.dataset,
            input_tokens=next(iter(q.outcomes.values())).input_tokens,
            options=tuple(Option(name=o) for o in q.outcomes),
        )
        for q in test
    ]
    predictor = LocalPredictor(args.checkpoint) if args.checkpoint else fit_prior(True)(train)
    p = {(f.step_id, f.option): f.p_success for f in predictor.predict(steps)}
    cost: dict[str, list[float]] = {}
    for q in test:
        for name, record in q.outcomes.items():
            cost.setdefault(name, []).append(record.cost("usd") or record.cost("tokens") or 0.0)
    by_cost = sorted(cost, key=lambda name: float(np.mean(cost[name])))
    rng = np.random.default_rng(args.seed)
    title = f"{args.data.name}: mean recorded gain of the top-ranked upgrades, {len(test)} queries"
    table = Table(title=title)
    for column in ("cheap -> dear", "ranked by", *(f"top {s:.0%}" for s in SHARES), "all"):
        table.add_column(column, justify="right")
    for cheap, dear in combinations(by_cost, 2):
        both = [q for q in test if cheap in q.outcomes and dear in q.outcomes]
        gain = np.array([q.outcomes[dear].score - q.outcomes[cheap].score for q in both])
        p_cheap = np.array([p[q.query_id, cheap] for q in both])
        p_dear = np.array([p[q.query_id, dear] for q in both])
        for label, score in (
            ("p(dear) - p(cheap)", p_dear - p_cheap),
            ("-p(cheap)", -p_cheap),
            ("recorded (oracle)", gain),
        ):
            # Ties (the prior's equal forecasts) in a seeded random order, not the file's.
            shuffled = rng.permutation(len(score))
            order = shuffled[np.argsort(-score[shuffled], kind="stable")]
            tops = [gain[order[: max(1, int(len(order) * s))]].mean() for s in SHARES]
            table.add_row(
                f"{cheap} -> {dear}",
                label,
                *(f"{t:+.3f}" for t in tops),
                f"{gain.mean():+.3f}",
            )
    Console(width=160).print(table)
    # Success AUC among the test rows of each option (what benchmarks/gap_ceiling.py varies),
    # and within each of its groups: what a predictor knows beyond the group's rate (the
    # grouped prior: nothing, 0.5).
    for name in by_cost:
        rows = [
            (q.dataset, q.outcomes[name].score, p[q.query_id, name])
            for q in test
            if name in q.outcomes
        ]
        found = auc([round(y) for _, y, _ in rows], [x for _, _, x in rows])
        groups: dict[str | None, list[tuple[float, float]]] = {}
        for group, y, x in rows:
            groups.setdefault(group, []).append((y, x))
        within = [
            (value, len(members))
            for members in groups.values()
            if (value := auc([round(y) for y, _ in members], [x for _, x in members])) is not None
        ]
        mean_within = sum(v * n for v, n in within) / max(sum(n for _, n in within), 1)
        print(
            f"AUC within {name}: {'-' if found is None else f'{found:.3f}'} ({len(rows)} rows); "
            f"within its {len(within)} groups, weighted by rows: {mean_within:.3f}"
        )


if __name__ == "__main__":
    main()
