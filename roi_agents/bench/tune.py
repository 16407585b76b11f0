"""Choose the controller's risk settings on replayed episodes of the training part.

A forecast that is right on average can still make a poor decision rule: budgeting each of
thirty steps at its own p90 budgets the run as if every step hit its p90 at once, and with many
options the plan exploits noise in the forecasts. So the settings are judged by what they
earn, not by what they forecast: `tune` replays episodes drawn from the training part only,
cross-validated (the predictor fitted on the other folds, the episodes drawn from the held-out
one), under each budget fraction, with each candidate setting, and keeps per budget the one
that earned most. The default (``p90``, ``step``) is kept unless another beats it by more than
the standard error of their paired difference, so that a tie in the noise changes nothing.

The test part (`split_queries` with the same seed and fraction) is never read, so ``roi-agents
bench --policy`` on the same seed measures the tuned policy honestly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from roi_agents.allocate import Controller, Policy, Risk, Setting
from roi_agents.bench.simulate import (
    BenchConfig,
    _dearest_cost,
    _mean_costs,
    _ours,
    _play,
    _step,
    choose_resource,
    fit_prior,
    list_prices,
    split_queries,
)
from roi_agents.data.replay import ReplayQuery, split_id
from roi_agents.data.split import split_by
from roi_agents.errors import DataError, InvalidValueError
from roi_agents.predict.base import Predictor
from roi_agents.types import Quantile

__all__ = ["CANDIDATES", "DEFAULT", "Tuned", "tune"]

CANDIDATES: tuple[tuple[Quantile, Risk], ...] = (
    ("p90", "step"),
    ("p90", "run"),
    ("p99", "step"),
    ("p99", "run"),
    ("mean", "step"),
)
"""The settings tried: the plan's quantile and whether it applies per step or to the total."""

DEFAULT: tuple[Quantile, Risk] = ("p90", "step")


@dataclass(frozen=True, slots=True)
class Tuned:
    """The policy and what it was chosen from.

    Attributes:
        policy: the settings per budget fraction.
        folds: cross-validation folds of the training part.
        episodes: replayed episodes per fold, budget and candidate.
        train_queries: queries in the training part.
    """

    policy: Policy
    folds: int
    episodes: int
    train_queries: int


def _label(candidate: tuple[Quantile, Risk]) -> str:
    return f"{candidate[0]}/{candidate[1]}"


def tune(
    queries: Sequence[ReplayQuery],
    config: BenchConfig,
    *,
    data: str = "",
    predictor: Callable[[list[ReplayQuery]], Predictor] | None = None,
    folds: int = 2,
    candidates: Sequence[tuple[Quantile, Risk]] = CANDIDATES,
    progress: Callable[[int], None] | None = None,
) -> Tuned:
    """Choose a `Setting` per budget fraction of ``config`` on the training part.

    Args:
        queries: the replay data; only its training part (``config``'s seed and fraction) is
            read.
        config: budgets, episodes (in all, shared out over the folds), steps, seed, split.
        data: a label for what it was tuned on.
        predictor: builds the predictor from queries (default: `PriorPredictor` fitted on them).
        folds: cross-validation folds, at least 2.
        candidates: the settings to try; the default (``p90``, ``step``) is always among them.
        progress: called with the number of replayed episodes just finished.

    Raises:
        InvalidValueError: on bad settings, or a training part too small for two folds.
        DataError: when no option has a recorded cost in the training part.
    """
    config.validate()
    candidates = list(dict.fromkeys([DEFAULT, *candidates]))
    if folds < 2:
        raise InvalidValueError("folds", f"must be >= 2, got {folds}")
    resource = config.resource or choose_resource(queries)
    train, _ = split_queries(queries, config.train_fraction, config.seed, config.split)
    means = _mean_costs(train, resource)
    if not means:
        raise DataError("replay", None, "no option has a recorded cost in the training part")
    dearest = max(means, key=lambda o: means[o])
    cuts = [k / folds for k in range(1, folds)]
    parts = split_by(train, lambda q: split_id(q.query_id), cuts, config.seed, "tune")
    if min(len(p) for p in parts) < 2:
        msg = f"{len(train)} training queries are too few for {folds} folds"
        raise InvalidValueError("folds", msg)
    build = predictor or fit_prior(config.group_by)
    prices = list_prices(train)
    per_fold = max(1, config.episodes // folds)
    # earned[fraction][candidate]: per replayed episode, folds one after another.
    earned = {f: {c: list[float]() for c in candidates} for f in config.budgets}
    for k, part in enumerate(parts):
        model = build([q for j, p in enumerate(parts) if j != k for q in p])
        rng = np.random.default_rng([config.seed, 3, k])
        size = min(config.steps, len(part))
        episodes = [
            [part[i] for i in rng.choice(len(part), size=size, replace=False)]
            for _ in range(per_fold)
        ]
        for episode in episodes:
            steps = [_step(q, config.group_by, prices) for q in episode]
            full = sum(_dearest_cost(q, dearest, resource) for q in episode)
            for fraction in config.budgets:
                for quantile, risk in candidates:
                    controller = Controller(
                        predictor=model,
                        resource=resource,
                        quantile=quantile,
                        resolution=config.resolution,
                        solver=config.solver,
                        risk=risk,
                    )
                    decide = _ours(controller, resource)
                    run = _play(episode, steps, fraction * full, resource, decide)
                    earned[fraction][quantile, risk].append(run.value)
            if progress is not None:
                progress(1)
    settings = [_choose(earned[f], per_step=f * means[dearest], fraction=f) for f in config.budgets]
    policy = Policy(resource=resource, settings=settings, data=data)
    return Tuned(policy, folds, per_fold, len(train))


def _choose(
    earned: dict[tuple[Quantile, Risk], list[float]], *, per_step: float, fraction: float
) -> Setting:
    """The candidate that earned most, if it beats the default by more than one paired SE."""
    values = {c: np.asarray(v) for c, v in earned.items()}
    default = values[DEFAULT]
    best = max(values, key=lambda c: float(values[c].mean()))
    gain = values[best] - default
    se = float(gain.std(ddof=1) / math.sqrt(gain.size)) if gain.size > 1 else math.inf
    mean_gain = float(gain.mean())
    chosen = best if mean_gain > se else DEFAULT
    return Setting(
        per_step=per_step,
        quantile=chosen[0],
        risk=chosen[1],
        fraction=fraction,
        values={_label(c): float(v.mean()) for c, v in values.items()},
        margin=(mean_gain, se if math.isfinite(se) else 0.0),
    )
