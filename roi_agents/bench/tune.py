"""Choose the controller's risk settings on replayed episodes of the training part.

A forecast that is right on average can still make a poor decision rule: budgeting each of
thirty steps at its own p90 budgets the run as if every step hit its p90 at once, and with many
options the plan exploits noise in the forecasts. So the settings are judged by what they
earn, not by what they forecast: `tune` replays episodes drawn from the training part only,
cross-validated (the predictor fitted on the training part less the held-out fold, the
episodes drawn from that fold), under each budget fraction, with each candidate setting, and
keeps per budget the one that earned most. The default (``p90``, ``step``) is kept unless
another beats it by more than the standard error of their paired difference, bootstrapped
over the replayed queries (episodes drawn from a fold reuse its queries, so an error over the
episodes would be too small), and on every fold (the bootstrap holds each fold's fitted
predictor fixed, so it misses how the fit varies), so that a tie in the noise changes nothing.

With a learned predictor composed with the prior (`ComposedPredictor`), how far to follow it
(``follow``: 0, 0.5 or 1 times the weights its calibration fitted by log loss) is chosen first,
by the value it earns at the default settings summed over the budgets, under the same rule with
0 as the default: the learned model adds to the prior only where following it earns more than
the prior alone by more than the error, never subtracts. The settings are then chosen at that
``follow``. ``roi-agents tune`` builds each fold's composed predictor with its weights fitted
afresh on the other folds' held queries (`fit_composed`'s ``held``), so no fold is judged with
weights fitted on its own outcomes.

With ``config.online``, each candidate's predictor learns from every step's outcome as the
fold's episodes run, as `run_bench` runs it online, so the settings are chosen for a predictor
that learns. The choice itself stays fixed for a run: a run sees one setting per episode, and
telling two settings apart that way takes hundreds to thousands of episodes of each
(``benchmarks/paired.py`` prints the count: 230-3,200 for ``p90/run`` against ``p90/step`` on
GPQA and simpleqa).

The test part (`split_queries` with the same seed and fraction) is never read, so ``roi-agents
bench --policy`` on the same seed measures the tuned policy honestly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from roi_agents.allocate import Controller, Policy, Risk, Setting
from roi_agents.bench.simulate import (
    BenchConfig,
    _dearest_cost,
    _mean_costs,
    _ours,
    _play,
    _query_bootstrap,
    _Run,
    _step,
    choose_resource,
    fit_prior,
    fitted,
    list_prices,
    resamples,
    split_queries,
)
from roi_agents.data.replay import ReplayQuery, split_id
from roi_agents.data.split import split_by
from roi_agents.errors import InvalidValueError
from roi_agents.predict.base import Learner, Predictor
from roi_agents.predict.composed import ComposedPredictor
from roi_agents.types import Quantile

__all__ = ["CANDIDATES", "DEFAULT", "FOLLOWS", "Tuned", "tune"]

CANDIDATES: tuple[tuple[Quantile, Risk], ...] = (
    ("p90", "step"),
    ("p90", "run"),
    ("p99", "step"),
    ("p99", "run"),
    ("mean", "step"),
)
"""The settings tried: the plan's quantile and whether it applies per step or to the total."""

DEFAULT: tuple[Quantile, Risk] = ("p90", "step")

FOLLOWS: tuple[float, ...] = (0.0, 0.5, 1.0)
"""How far a `ComposedPredictor` may follow its learned model; the first is the default."""


@dataclass(frozen=True, slots=True)
class Tuned:
    """The policy and what it was chosen from.

    Attributes:
        policy: the settings per budget fraction.
        folds: cross-validation folds of the training part.
        episodes: replayed episodes per fold, budget and candidate.
        train_queries: queries in the training part.
        replayed_queries: those the episodes were drawn from (``replay``).
        steps: steps per episode: the config's, or (at least) the queries of the smallest fold
            where it holds fewer.
    """

    policy: Policy
    folds: int
    episodes: int
    train_queries: int
    replayed_queries: int
    steps: int


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
    replay: Callable[[ReplayQuery], bool] | None = None,
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
        replay: which training queries episodes may be drawn from (default: all). Give a learned
            predictor the queries it was not fine-tuned on (`fine_tuned_on`): on its own
            fine-tuning queries its per-step signal is overfit, and following it looks better
            than it is (GPQA probe: value summed over the budgets 82.6 at ``follow`` 1 against
            72.7 at 0 on them, while on the test part following it lost).
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
    dearest = max(means, key=lambda o: means[o])
    replayable = [q for q in train if replay is None or replay(q)]
    too_few = f"{len(replayable)} training queries to replay are too few for {folds} folds"
    if folds > len(replayable) // 2:
        raise InvalidValueError("folds", too_few)
    cuts = [k / folds for k in range(1, folds)]
    parts = split_by(replayable, lambda q: split_id(q.query_id), cuts, config.seed, "tune")
    if min(len(p) for p in parts) < 2:
        raise InvalidValueError("folds", too_few)
    build = predictor or fit_prior(config.group_by)
    prices = list_prices(train)
    per_fold = max(1, config.episodes // folds)
    # runs[fraction][(quantile, risk, follow)]: per replayed episode, fold after fold; where:
    # each episode's steps as indices of their queries, for the bootstrap over queries.
    runs: dict[float, dict[tuple[Quantile, Risk, float], list[_Run]]] = {
        f: {} for f in config.budgets
    }
    where: list[list[int]] = []
    index = {q.query_id: i for i, q in enumerate(replayable)}
    follows: tuple[float, ...] = (1.0,)
    for k, part in enumerate(parts):
        held = {q.query_id for q in part}
        rest = [q for q in train if q.query_id not in held]
        model = fitted(build, rest, config)
        if isinstance(model, ComposedPredictor):
            follows = FOLLOWS
        # Online, each budget, candidate and follow runs its own predictor through the fold's
        # episodes in turn, learning from each step's outcome as `run_bench` does.
        keys = list(itertools.product(config.budgets, candidates, follows))
        learners = {key: fitted(build, rest, config) for key in keys} if config.online else {}
        rng = np.random.default_rng([config.seed, 3, k])
        size = min(config.steps, len(part))
        episodes = [
            [part[i] for i in rng.choice(len(part), size=size, replace=False)]
            for _ in range(per_fold)
        ]
        for episode in episodes:
            where.append([index[q.query_id] for q in episode])
            steps = [_step(q, config.group_by, prices) for q in episode]
            full = sum(_dearest_cost(q, dearest, resource) for q in episode)
            for fraction, (quantile, risk), follow in keys:
                playing = learners.get((fraction, (quantile, risk), follow), model)
                if isinstance(playing, ComposedPredictor):
                    playing.follow = follow
                controller = Controller(
                    predictor=playing,
                    resource=resource,
                    quantile=quantile,
                    resolution=config.resolution,
                    solver=config.solver,
                    risk=risk,
                )
                learner = playing if config.online and isinstance(playing, Learner) else None
                decide = _ours(controller, resource)
                run = _play(episode, steps, fraction * full, resource, decide, learner)
                runs[fraction].setdefault((quantile, risk, follow), []).append(run)
            if progress is not None:
                progress(1)
    # Episodes reuse the queries of a fold: errors are bootstrapped over the queries replayed.
    resample = resamples(len(replayable), [config.seed, 4])

    def earned(found: list[_Run]) -> _Earned:
        values = np.array([r.value for r in found])
        by_fold = values.reshape(folds, per_fold).mean(axis=1)  # episodes are fold after fold
        return _Earned(float(values.mean()), _query_bootstrap(found, where, resample), by_fold)

    # How far to follow the learned model: at the default settings, over every budget; not at
    # all (the prior alone) unless following it earns more by more than the error.
    by_follow = {
        f: _Earned.total([earned(runs[b][(*DEFAULT, f)]) for b in config.budgets]) for f in follows
    }
    follow, _, _ = _pick(by_follow, follows[0])
    settings = []
    for fraction in config.budgets:
        values = {(q, r): earned(v) for (q, r, f), v in runs[fraction].items() if f == follow}
        chosen, gain, se = _pick(values, DEFAULT)
        settings.append(
            Setting(
                per_step=fraction * means[dearest],
                quantile=chosen[0],
                risk=chosen[1],
                fraction=fraction,
                values={_label(c): v.mean for c, v in values.items()},
                margin=(gain, se),
            )
        )
    policy = Policy(
        resource=resource,
        settings=settings,
        follow=follow,
        follows={f"{f:g}": v.mean for f, v in by_follow.items()} if len(follows) > 1 else {},
        data=data,
        online=config.online,
        seed=config.seed,
        train_fraction=config.train_fraction,
        split=config.split,
    )
    played = min(config.steps, min(len(p) for p in parts))
    return Tuned(policy, folds, per_fold, len(train), len(replayable), played)


@dataclass(frozen=True, slots=True)
class _Earned:
    """A candidate's mean value per episode.

    In all, in each bootstrap sample of the queries, and on each fold's episodes.
    """

    mean: float
    boot: np.ndarray
    folds: np.ndarray

    @staticmethod
    def total(parts: list[_Earned]) -> _Earned:
        return _Earned(
            sum(p.mean for p in parts),
            np.sum([p.boot for p in parts], axis=0),
            np.sum([p.folds for p in parts], axis=0),
        )


K = TypeVar("K")


def _pick(values: dict[K, _Earned], default: K) -> tuple[K, float, float]:
    """The key that earned most, if it beats ``default`` by more than the error and on every fold.

    Else ``default``. The SE is bootstrapped over the replayed queries (paired: the same
    resamples for both); it holds each fold's fitted predictor fixed, so it misses how the fit
    varies, which the folds show. Also returns the best key's gain over ``default`` and that SE.
    """
    best = max(values, key=lambda c: values[c].mean)
    gain = values[best].mean - values[default].mean
    se = float(np.std(values[best].boot - values[default].boot, ddof=1))
    everywhere = bool(np.all(values[best].folds > values[default].folds))
    return (best if gain > se and everywhere else default), gain, se
