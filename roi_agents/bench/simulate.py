"""The replay benchmark: policies spend a budget over episodes of real recorded outcomes.

Queries are split into a training part (what predictors and tuned baselines may learn from) and a
test part. An episode is ``steps`` test queries in order; its budget is a fraction of what always
taking the most expensive option would cost on them. Every policy runs every episode under the
same rules: before each step it picks an option (or skips) and a hard cap; a step whose recorded
cost is above its cap is cut off at the cap, spends the cap and is worth nothing. A cap never
exceeds what is left, so no policy can overrun; overruns are still counted, as a check.

Policies:

* ``fixed:<option>``: always that option, cap = what is left.
* ``random-mix``: the most expensive option with the probability that makes the expected spend
  equal to the budget (training means), else the cheapest.
* ``threshold``: RouteLLM-style router: the most expensive option when the predicted gain in
  success over the cheapest is at least a threshold, tuned on the training part to the budget.
* ``ours``: the predictor and the `Controller`, re-planning after every step; each budget's from
  a predictor fitted afresh, which no baseline's forecasts touch. With ``online``,
  each step's outcome is fed back to the predictor, as in a deployment that learns from its own
  traffic (a step cut off at its cap as ``truncated``, with what it spent up to the cap): the
  prior learns it, a `ComposedPredictor` learns its weights too, and a learned predictor that
  does not learn is wrapped in a `GuardedPredictor` over the prior fitted on the training part;
  no budget learns from another's episodes.
* ``oracle``: the exact knapsack on the true outcomes (HiGHS): the ceiling.

Options carry list prices where the training part's recorded USD costs are exactly prices times
token counts (`list_prices`), as a deployment knows its price list; a predictor then prices its
token forecast, the prompt's size being known.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from roi_agents.allocate import Controller, Policy, Risk, SolverName
from roi_agents.allocate._milp import solve_milp
from roi_agents.data.replay import ReplayQuery, split_id
from roi_agents.data.split import split_by
from roi_agents.errors import DataError, InvalidValueError
from roi_agents.predict.base import Learner, Predictor
from roi_agents.predict.cache import CachedPredictor
from roi_agents.predict.calibration import Calibration, Composition
from roi_agents.predict.composed import ComposedPredictor, fit_composition
from roi_agents.predict.guard import GuardedPredictor
from roi_agents.predict.prior import PriorPredictor
from roi_agents.types import SKIP, Budget, Decision, Option, Quantile, Resource, Spend, Step

__all__ = [
    "BenchConfig",
    "BenchResult",
    "Decide",
    "PolicyResult",
    "Prices",
    "Setup",
    "StepOutcome",
    "choose_resource",
    "fit_prior",
    "list_prices",
    "play_episode",
    "prepare",
    "run_bench",
    "split_queries",
]


# USD per million (input, output) tokens, by option.
Prices = dict[str, tuple[float, float]]


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """Settings of one benchmark run."""

    budgets: tuple[float, ...] = (0.1, 0.25, 0.5)
    episodes: int = 100
    steps: int = 30
    seed: int = 0
    train_fraction: float = 0.5
    resource: Resource | None = None
    quantile: Quantile = "p90"
    risk: Risk = "step"
    policy: Policy | None = None
    resolution: float = 0.01
    solver: SolverName = "auto"
    group_by: bool = True
    online: bool = False
    split: Literal["query", "dataset"] = "query"

    def validate(self) -> None:
        """Raise `InvalidValueError` naming the first bad setting."""
        if not self.budgets or any(not (b > 0 and math.isfinite(b)) for b in self.budgets):
            msg = f"fractions must be finite and > 0, got {self.budgets}"
            raise InvalidValueError("budgets", msg)
        if len(set(self.budgets)) < len(self.budgets):
            raise InvalidValueError("budgets", f"a fraction is given twice: {self.budgets}")
        if self.seed < 0:
            raise InvalidValueError("seed", f"must be >= 0, got {self.seed}")
        if self.episodes < 1:
            raise InvalidValueError("episodes", f"must be >= 1, got {self.episodes}")
        if self.steps < 1:
            raise InvalidValueError("steps", f"must be >= 1, got {self.steps}")
        if not 0 < self.train_fraction < 1:
            raise InvalidValueError(
                "train_fraction", f"must be in (0, 1), got {self.train_fraction}"
            )


@dataclass(slots=True)
class PolicyResult:
    """One policy at one budget, as means per episode.

    ``value_se`` is the standard error of ``value`` over the episodes; ``gap_closed_se`` that of
    ``gap_closed``, from the per-episode differences to the best baseline on the same episodes
    (paired), the oracle's margin over that baseline taken as known. ``gap_closed`` is measured
    against the best fixed option or random mix; ``gap_closed_all`` against the best of every
    baseline (the routers and ``best-single`` too). ``choice``: what a baseline tuned on the
    training part chose (``best-single``'s option, ``threshold-pairs``' pair and threshold).

    ``pgr`` is anchored on the dearest option's unlimited value (above 1 where it is not the
    best); ``pgr_best`` on the best option's.

    Episodes draw from the same test queries, so the per-episode standard errors are too small
    where there are few of them: ``value_se_queries`` and ``gap_closed_all_se_queries`` are
    bootstrapped over the distinct test queries instead (each step's earned value weighted by
    how often its query is drawn; the episodes' choices held fixed).
    """

    value: float
    spend: float
    budget: float
    overruns: int
    truncated: float
    skipped: float
    latency_ms_p50: float
    latency_ms_p99: float
    pct_oracle: float = math.nan
    pgr: float = math.nan
    gap_closed: float = math.nan
    value_se: float = math.nan
    gap_closed_se: float = math.nan
    gap_closed_all: float = math.nan
    gap_closed_all_se: float = math.nan
    value_se_queries: float = math.nan
    gap_closed_all_se_queries: float = math.nan
    pgr_best: float = math.nan
    choice: str = ""


@dataclass(slots=True)
class BenchResult:
    """Everything one run measured, keyed by budget fraction then policy name."""

    data: str
    config: BenchConfig
    resource: Resource
    options: list[str]
    cheapest: str
    dearest: str
    train_queries: int
    test_queries: int
    unlimited: dict[str, float]
    distinct_test_queries: int = 0
    """Test queries the episodes drew at least once: the sample the query bootstrap resamples."""
    prices: Prices = field(default_factory=dict)
    budgets: dict[float, dict[str, PolicyResult]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The machine-readable shape documented for ``roi-agents bench --json``."""
        return {
            "data": self.data,
            "episodes": self.config.episodes,
            "steps": self.config.steps,
            "seed": self.config.seed,
            "resource": self.resource,
            "quantile": self.config.quantile,
            "risk": self.config.risk,
            "policy": (
                None if self.config.policy is None else self.config.policy.model_dump(mode="json")
            ),
            "online": self.config.online,
            "split": self.config.split,
            "options": self.options,
            "cheapest": self.cheapest,
            "most_expensive": self.dearest,
            "train_queries": self.train_queries,
            "test_queries": self.test_queries,
            "distinct_test_queries": self.distinct_test_queries,
            "unlimited_value": self.unlimited,
            "list_prices": {name: list(price) for name, price in self.prices.items()},
            "budgets": [
                {
                    "fraction": fraction,
                    "policies": {
                        name: {k: _finite(getattr(r, k)) for k in r.__slots__}
                        for name, r in policies.items()
                    },
                }
                for fraction, policies in self.budgets.items()
            ],
        }


def _finite(x: object) -> object:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def choose_resource(queries: Sequence[ReplayQuery]) -> Resource:
    """USD when every outcome has a recorded cost and some cost is above 0, else tokens.

    (Every ``cost_usd`` at 0, as for self-hosted models, would leave a budget of 0 USD.)

    Raises:
        DataError: when neither is recorded for every outcome.
    """
    records = [r for q in queries for r in q.outcomes.values()]
    if all(r.cost_usd is not None for r in records) and any(r.cost_usd for r in records):
        return "usd"
    if all(r.cost("tokens") is not None for r in records):
        return "tokens"
    lacking = next(r for r in records if r.cost("tokens") is None)  # and some lack cost_usd
    usd = next(r for r in records if r.cost_usd is None)
    file, line = lacking.where or ("replay", None)
    other = f"line {usd.where[1]} of {usd.where[0]}" if usd.where else "another record"
    msg = (
        f"query {lacking.query_id!r} option {lacking.option!r} has no token counts, and "
        f"{other} (query {usd.query_id!r} option {usd.option!r}) no cost_usd: give "
        "cost_usd on every line, or both token counts on every line"
    )
    raise DataError(file, line, msg)


def split_queries(
    queries: Sequence[ReplayQuery],
    train_fraction: float,
    seed: int,
    by: Literal["query", "dataset"] = "query",
) -> tuple[list[ReplayQuery], list[ReplayQuery]]:
    """A seeded split into training and test queries by query id (`roi_agents.data.split`).

    ``roi-agents train`` splits the same way, so a checkpoint trained with the bench's seed and
    training fraction never saw the bench's test queries.

    ``by="dataset"`` measures transfer to kinds of steps a checkpoint never saw: whole datasets
    (subjects) are held out as ``roi-agents train --split dataset`` holds them out with the same
    seed and fraction, and the held-out ones are split again by query. The training part is
    every query of the other datasets and the first part of the held-out ones (what a prior
    learns the new kinds from); the test part is the rest of the held-out ones.
    """
    if by == "dataset":
        known, held = split_by(queries, lambda q: q.dataset or "", [train_fraction], seed)
        learn, test = split_by(held, lambda q: split_id(q.query_id), [train_fraction], seed)
        return known + learn, test
    train, test = split_by(queries, lambda q: split_id(q.query_id), [train_fraction], seed)
    return train, test


def list_prices(queries: Sequence[ReplayQuery]) -> Prices:
    """The options whose recorded USD costs are list prices times recorded token counts.

    Per option, prices are fitted by least squares on relative errors and kept only when they
    reproduce every recorded cost within 1e-6 (relative); an option with a row lacking its
    cost or token counts gets none.
    """
    rows: dict[str, list[tuple[float, float, float]] | None] = {}
    for query in queries:
        for name, r in query.outcomes.items():
            known = rows.setdefault(name, [])
            if known is None:
                continue
            if r.input_tokens is None or r.output_tokens is None or r.cost_usd is None:
                rows[name] = None
            else:
                known.append((r.input_tokens / 1e6, r.output_tokens / 1e6, r.cost_usd))
    prices: Prices = {}
    for name, found in rows.items():
        if not found:
            continue
        data = np.array(found)
        tokens, cost = data[:, :2], data[:, 2]
        scale = np.where(cost > 0, cost, 1e-9)[:, None]
        fit = np.linalg.lstsq(tokens / scale, cost / scale[:, 0], rcond=None)[0]
        error = np.abs(tokens @ fit - cost)
        if (fit >= 0).all() and (error <= 1e-6 * cost + 1e-12).all():
            prices[name] = (float(fit[0]), float(fit[1]))
    return prices


def _step(query: ReplayQuery, group_by: bool, prices: Prices) -> Step:
    first = next(iter(query.outcomes.values()))
    return Step(
        id=query.query_id,
        text=query.text,
        group=query.dataset if group_by else None,
        input_tokens=first.input_tokens,
        options=tuple(_option(name, prices) for name in query.outcomes),
    )


def _option(name: str, prices: Prices) -> Option:
    input_price, output_price = prices.get(name, (0.0, 0.0))
    return Option(name=name, input_price=input_price, output_price=output_price)


_ROUNDING = 1e-9
_NOTHING = 1e-12
"""A cap at or below this (what floating point leaves of a spent budget) runs nothing: a skip."""

# A policy sees the episode's steps, the index of the current one and what is left, and answers
# (option, cap on the resource).
Decide = Callable[[Sequence[Step], int, float], tuple[str, float]]


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What happened to one step: the option run (or skip), its cap, what it spent and earned."""

    option: str
    cap: float
    spend: float
    value: float
    cut_off: bool


@dataclass(slots=True)
class _Run:
    value: float = 0.0
    spend: float = 0.0
    truncated: int = 0
    skipped: int = 0
    latencies: list[float] = field(default_factory=list)
    steps: list[StepOutcome] = field(default_factory=list)


def _play(
    episode: Sequence[ReplayQuery],
    steps: Sequence[Step],
    budget: float,
    resource: Resource,
    decide: Decide,
    learner: Learner | None = None,
) -> _Run:
    run = _Run()
    for i, query in enumerate(episode):
        left = max(budget - run.spend, 0.0)  # a spend that met the budget can round past it
        started = time.perf_counter()
        option, cap = decide(steps, i, left)
        run.latencies.append(time.perf_counter() - started)
        cap = min(cap, left)
        record = query.outcomes.get(option)
        if option == SKIP or record is None or cap <= _NOTHING:
            run.skipped += 1
            run.steps.append(StepOutcome(SKIP, 0.0, 0.0, 0.0, cut_off=False))
            continue
        cost = record.cost(resource) or 0.0
        # A cost equal to its cap but for floating-point rounding (prices times tokens summed
        # in another order) fits it.
        cut_off = cost > cap * (1 + _ROUNDING)
        spend, value = (cap, 0.0) if cut_off else (min(cost, cap), record.score)
        run.spend += spend
        run.value += value
        run.truncated += cut_off
        run.steps.append(StepOutcome(option, cap, spend, value, cut_off))
        if learner is not None:
            seen = _up_to(record.spend, spend / cost) if cut_off else record.spend
            learner.observe(steps[i], option, seen, value, truncated=cut_off)
    return run


def _up_to(spend: Spend, share: float) -> Spend:
    """What a step cut off at ``share`` of its recorded cost spent: its prompt, output pro rata."""
    return Spend(
        input_tokens=spend.input_tokens,
        output_tokens=math.floor(spend.output_tokens * share),
        usd=spend.usd * share,
    )


def play_episode(
    episode: Sequence[ReplayQuery],
    budget: float,
    controller: Controller,
    resource: Resource,
    *,
    group_by: bool = True,
    prices: Prices | None = None,
) -> tuple[list[Decision], list[StepOutcome]]:
    """Run the controller over one episode; return its decision and the outcome per step."""
    steps = [_step(q, group_by, prices or {}) for q in episode]
    decisions: list[Decision] = []
    ours = _ours(controller, resource, decisions)
    run = _play(episode, steps, budget, resource, ours)
    return decisions, run.steps


def run_bench(
    queries: Sequence[ReplayQuery],
    config: BenchConfig,
    *,
    data: str = "",
    predictor: Callable[[list[ReplayQuery]], Predictor] | None = None,
    progress: Callable[[int], None] | None = None,
) -> BenchResult:
    """Run every policy on the same seeded episodes at every budget.

    Args:
        queries: the replay data.
        config: the settings.
        data: a label for the data in the result.
        predictor: builds the predictor from the training queries (default: `PriorPredictor`
            fitted on them).
        progress: called with the number of episodes just finished.

    Raises:
        InvalidValueError: on bad settings, or fewer test queries than steps.
    """
    setup = prepare(queries, config, predictor=predictor)
    resource, cheapest, dearest, means = setup.resource, setup.cheapest, setup.dearest, setup.means
    model, train = setup.predictor, setup.train
    episodes, full, options = setup.episodes, setup.full, sorted(means)
    steps = [[_step(q, config.group_by, setup.prices) for q in episode] for episode in episodes]
    unlimited = {
        name: float(
            np.mean([sum(q.outcomes[o].score for q in ep if o in q.outcomes) for ep in episodes])
        )
        for name, o in ((f"fixed:{o}", o) for o in options)
    }
    result = BenchResult(
        data=data,
        config=config,
        resource=resource,
        options=options,
        cheapest=cheapest,
        dearest=dearest,
        train_queries=len(train),
        test_queries=len(setup.test),
        unlimited=unlimited,
        prices=setup.prices,
    )
    where, result.distinct_test_queries = query_index(episodes)
    resample = resamples(result.distinct_test_queries, [config.seed, 2])
    train_steps = [_step(q, config.group_by, setup.prices) for q in train]
    gains = _gains(model, train_steps, cheapest, dearest)
    train_table = _forecast_table(model, train_steps, resource)
    rehearsal = _rehearsal(train, config, dearest, resource)
    for fraction in config.budgets:
        per_step = fraction * means[dearest]
        mix = _mix_probability(per_step, means[cheapest], means[dearest])
        threshold = _tune_threshold(train, gains, per_step, cheapest, dearest, resource)
        mix_rng = np.random.default_rng([config.seed, round(fraction * 1e6)])
        policies: dict[str, Decide] = {f"fixed:{o}": _fixed(o) for o in options}
        policies["random-mix"] = _random_mix(mix, cheapest, dearest, mix_rng)
        policies["threshold"] = _threshold(model, threshold, cheapest, dearest)
        single = _best_single(rehearsal, options, fraction, resource)
        policies["best-single"] = _fixed(single)
        pair, pair_threshold = _best_pair(train, train_table, per_step, means, resource)
        policies["threshold-pairs"] = _threshold(model, pair_threshold, *pair)
        price = _tune_router(train, train_table, per_step, resource)
        policies["router"] = _router(model, price, resource)
        choices = {
            "best-single": single,
            "threshold-pairs": f"{pair[0]} / {pair[1]} at {pair_threshold:.3g}",
            "router": f"price {price:.3g} per {resource}",
        }
        # Ours plans with a predictor of its own, fitted afresh: the baselines' forecasts (of
        # the training steps too) would move a composed predictor's running means.
        ours = setup.fit()
        policies["ours"] = _ours(_controller(ours, resource, config), resource)
        learner = ours if config.online and isinstance(ours, Learner) else None
        runs: dict[str, list[_Run]] = {name: [] for name in [*policies, "oracle"]}
        for episode, episode_steps, total in zip(episodes, steps, full, strict=True):
            budget = fraction * total
            for name, decide in policies.items():
                learns = learner if name == "ours" else None
                runs[name].append(_play(episode, episode_steps, budget, resource, decide, learns))
            runs["oracle"].append(
                _play(episode, episode_steps, budget, resource, _oracle(episode, budget, resource))
            )
            if progress is not None:
                progress(1)
        budgets = [fraction * total for total in full]
        result.budgets[fraction] = _summarise(
            runs, budgets, unlimited, cheapest, dearest, where, resample
        )
        for name, choice in choices.items():
            result.budgets[fraction][name].choice = choice
    return result


@dataclass(frozen=True, slots=True)
class Setup:
    """What every policy shares: the split, the fitted predictor, the episodes and budgets.

    Attributes:
        full: per episode, the cost of always taking the most expensive option; an episode's
            budget at fraction ``f`` is ``f * full[i]``.
        prices: the options' list prices (`list_prices` of the training part).
        fit: fits the predictor again from the training part, as `predictor` (guarded when the
            config is ``online`` and it cannot learn): ours' own at each budget.
    """

    train: list[ReplayQuery]
    test: list[ReplayQuery]
    resource: Resource
    means: dict[str, float]
    cheapest: str
    dearest: str
    predictor: Predictor
    controller: Controller
    episodes: list[list[ReplayQuery]]
    full: list[float]
    prices: Prices
    fit: Callable[[], Predictor]


def prepare(
    queries: Sequence[ReplayQuery],
    config: BenchConfig,
    *,
    predictor: Callable[[list[ReplayQuery]], Predictor] | None = None,
) -> Setup:
    """Split, fit the predictor, draw the seeded episodes.

    Raises:
        InvalidValueError: on bad settings, or fewer test queries than steps.
        DataError: when no option has a recorded cost in the training part.
    """
    config.validate()
    rng = np.random.default_rng(config.seed)
    resource = config.resource or choose_resource(queries)
    train, test = split_queries(queries, config.train_fraction, config.seed, config.split)
    if config.split == "dataset" and len(test) < config.steps:
        groups = len({q.dataset for q in queries})
        msg = (
            f"the held-out datasets have {len(test)} test queries, fewer than {config.steps} "
            f"steps per episode: --split dataset holds out whole datasets (these files have "
            f"{groups}); use --split query, or files with more datasets or subjects"
        )
        raise InvalidValueError("split", msg)
    if len(test) < config.steps:
        msg = f"{len(test)} test queries, fewer than {config.steps} steps per episode"
        raise InvalidValueError("steps", msg)
    means = _mean_costs(train, resource)
    if config.policy is not None and config.policy.resource != resource:
        msg = f"the policy counts {config.policy.resource}, the bench's budget {resource}"
        raise InvalidValueError("policy", msg)
    cheapest = min(means, key=lambda o: means[o])
    dearest = max(means, key=lambda o: means[o])
    build = predictor or fit_prior(config.group_by)

    def fit() -> Predictor:
        return fitted(build, train, config)

    model = fit()
    episodes = [
        [test[i] for i in rng.choice(len(test), size=config.steps, replace=False)]
        for _ in range(config.episodes)
    ]
    full = [sum(_dearest_cost(q, dearest, resource) for q in ep) for ep in episodes]
    return Setup(
        train,
        test,
        resource,
        means,
        cheapest,
        dearest,
        model,
        _controller(model, resource, config),
        episodes,
        full,
        list_prices(train),
        fit,
    )


def fitted(
    build: Callable[[list[ReplayQuery]], Predictor], train: list[ReplayQuery], config: BenchConfig
) -> Predictor:
    """``build(train)`` ready for a run under ``config``.

    A composed predictor follows its policy's ``follow``; one that learns online but cannot
    learn itself (a learned predictor alone) is guarded by a prior fitted on ``train``.
    """
    model = build(train)
    if config.policy is not None and isinstance(model, ComposedPredictor):
        model.follow = config.policy.follow
    if config.online and not isinstance(model, Learner):
        return GuardedPredictor(model, fit_prior(config.group_by)(train))
    return model


def _controller(model: Predictor, resource: Resource, config: BenchConfig) -> Controller:
    return Controller(
        predictor=model,
        resource=resource,
        quantile=config.quantile,
        resolution=config.resolution,
        solver=config.solver,
        risk=config.risk,
        policy=config.policy,
    )


def fit_prior(group_by: bool) -> Callable[[list[ReplayQuery]], PriorPredictor]:
    """A factory that fits a `PriorPredictor` on training queries."""

    def build(train: list[ReplayQuery]) -> PriorPredictor:
        prior = PriorPredictor(group_by=group_by)
        for query in train:
            for record in query.outcomes.values():
                prior.record(record.option, query.dataset, record.spend, record.score)
        return prior

    return build


def fit_composed(
    learned: Predictor, group_by: bool, held: Callable[[ReplayQuery], bool] | None = None
) -> Callable[[list[ReplayQuery]], ComposedPredictor]:
    """A factory that composes ``learned`` with a prior fitted on the training queries.

    The prior learns every training outcome. In a group the checkpoint was not fine-tuned on
    (not in its `ComposedPredictor.known_groups`: it never saw those steps), the outcomes teach
    the composition's weights too, in order, as `ComposedPredictor.observe` does online; in the
    others the checkpoint's own weights stand, since its forecasts of its own fine-tuning rows
    would overstate them.

    ``held``: which queries the checkpoint was not fine-tuned on (`fine_tuned_on`). Given, the
    weights in its known groups are fitted afresh on the held queries among those each call is
    given (`fit_composition`, the level a prior fitted on the others), not taken from the
    checkpoint, which fitted them on all its held queries, and so are the checkpoint's
    calibration maps (`_remapped`): `tune` then judges how far to follow the model on queries
    neither its weights nor its maps saw (cross-fitting). On GPQA's 14 held queries the
    checkpoint's own weights made following look better there than it was on the test part; on
    simpleqa its own maps did (follow 0.5 chosen, 0 with the maps refitted).
    """
    # Per training part, its refitted maps and weights: `tune` builds a predictor per fold and,
    # online, per budget, candidate and follow, each time from the same part.
    refitted: dict[frozenset[str], tuple[Predictor, Composition | None]] = {}

    def build(train: list[ReplayQuery]) -> ComposedPredictor:
        composed = ComposedPredictor(learned, PriorPredictor(group_by=group_by))
        prices = list_prices(train)
        if held is not None:
            part = frozenset(q.query_id for q in train)
            if part not in refitted:
                known = [q for q in train if q.dataset in composed.known_groups]
                remapped = _remapped(learned, known, held)
                refitted[part] = remapped, _refit(remapped, known, held, group_by, prices)
            remapped, refit = refitted[part]
            composed = ComposedPredictor(
                remapped, composed.prior, composition=refit or composed.composition
            )
        new = []
        for query in train:
            if query.dataset in composed.known_groups:
                for record in query.outcomes.values():
                    composed.prior.record(record.option, query.dataset, record.spend, record.score)
            else:
                new.append(query)
        for start in range(0, len(new), _TEACH):
            chunk = new[start : start + _TEACH]
            steps = [_step(q, group_by, prices) for q in chunk]
            composed.predict(steps)  # one batch: the groups' means, the signals remembered
            for query, step in zip(chunk, steps, strict=True):
                for record in query.outcomes.values():
                    composed.observe(step, record.option, record.spend, record.score)
        return composed

    return build


def _remapped(
    learned: Predictor, queries: list[ReplayQuery], held: Callable[[ReplayQuery], bool]
) -> Predictor:
    """``learned`` with its calibration maps refitted on the ``held`` queries among ``queries``.

    The checkpoint fitted its maps (base rates, success maps, conformal cost quantiles) on all
    its held queries, the very ones `tune` replays: its forecasts of a replayed query had read
    its outcome, and following them looked better than it was (simpleqa: the replays chose
    ``follow`` 0.5, which lost 0.3-0.5 per episode to the prior on the test part). As it is
    when it has no raw outputs to refit from (`LocalPredictor.outputs`) or no held query.
    """
    from roi_agents.train.examples import to_examples
    from roi_agents.train.pipeline import calibrate

    inner = learned.predictor if isinstance(learned, CachedPredictor) else learned
    outputs = getattr(inner, "outputs", None)
    stored = getattr(inner, "calibration", None)
    own = [q for q in queries if held(q)]
    if outputs is None or not isinstance(stored, Calibration) or not own:
        return learned
    rows = to_examples(r for q in own for r in q.outcomes.values())
    fitted_on = to_examples(r for q in queries if not held(q) for r in q.outcomes.values())
    maps = calibrate(rows, outputs([e.text for e in rows]), fitted_on)
    remapped = copy.copy(inner)
    remapped.calibration = maps.model_copy(update={"labels": stored.labels})  # type: ignore[attr-defined]
    return CachedPredictor(remapped) if inner is not learned else remapped


def _refit(
    learned: Predictor,
    queries: list[ReplayQuery],
    held: Callable[[ReplayQuery], bool],
    group_by: bool,
    prices: Prices,
) -> Composition | None:
    """The composition's weights fitted on the ``held`` queries, at a level fitted on the rest.

    None when no query is held.
    """
    own = [q for q in queries if held(q)]
    if not own:
        return None
    level = fit_prior(group_by)([q for q in queries if not held(q)])
    steps = [_step(q, group_by, prices) for q in own]
    forecasts = [
        f for s in range(0, len(steps), _TEACH) for f in learned.predict(steps[s : s + _TEACH])
    ]
    outcomes = {
        (q.query_id, r.option): (r.score, r.spend) for q in own for r in q.outcomes.values()
    }
    return fit_composition(steps, forecasts, level, outcomes)


# Training queries forecast in one batch by `fit_composed`.
_TEACH = 256


def _mean_costs(train: Sequence[ReplayQuery], resource: Resource) -> dict[str, float]:
    """Each option's mean cost in ``resource`` over the training part.

    Raises:
        DataError: when no option has a recorded cost there, or every cost is 0 (a budget
            that is a fraction of 0 buys nothing).
    """
    totals: dict[str, list[float]] = {}
    for query in train:
        for option, record in query.outcomes.items():
            cost = record.cost(resource)
            if cost is not None:
                totals.setdefault(option, []).append(cost)
    if not totals:
        raise DataError("replay", None, "no option has a recorded cost in the training part")
    means = {o: float(np.mean(c)) for o, c in totals.items()}
    if max(means.values()) <= 0:
        msg = f"every recorded cost in {resource} is 0 in the training part: nothing to budget"
        hint = " (try --resource tokens)" if resource == "usd" else ""
        raise DataError("replay", None, msg + hint)
    return means


def _dearest_cost(query: ReplayQuery, dearest: str, resource: Resource) -> float:
    record = query.outcomes.get(dearest)
    if record is not None:
        return record.cost(resource) or 0.0
    return max((r.cost(resource) or 0.0) for r in query.outcomes.values())


def _mix_probability(per_step: float, cheap: float, dear: float) -> float:
    if dear <= cheap:
        return 1.0
    return float(min(max((per_step - cheap) / (dear - cheap), 0.0), 1.0))


def _gains(model: Predictor, steps: list[Step], cheapest: str, dearest: str) -> dict[str, float]:
    """Predicted success of the dearest option minus the cheapest's, per step."""
    p: dict[tuple[str, str], float] = {
        (f.step_id, f.option): f.p_success for f in model.predict(steps)
    }
    return {s.id: p.get((s.id, dearest), 0.0) - p.get((s.id, cheapest), 0.0) for s in steps}


def _tune_threshold(
    train: Sequence[ReplayQuery],
    gains: dict[str, float],
    per_step: float,
    cheapest: str,
    dearest: str,
    resource: Resource,
) -> float:
    """The lowest gain threshold whose training spend per query fits the budget per step."""
    rows = []
    for q in train:
        cheap, dear = q.outcomes.get(cheapest), q.outcomes.get(dearest)
        if cheap is None or dear is None:
            continue
        rows.append((gains[q.query_id], dear.cost(resource) or 0.0, cheap.cost(resource) or 0.0))
    if not rows:
        return math.inf
    rows.sort(key=lambda r: -r[0])
    gain = np.array([r[0] for r in rows])
    extra = np.cumsum([r[1] - r[2] for r in rows])
    base = sum(r[2] for r in rows)
    spend = (base + extra) / len(rows)
    # Routing the k highest-gain queries to the dearest option; ties route together.
    best = math.inf
    for k in range(len(rows)):
        if spend[k] <= per_step and (k + 1 == len(rows) or gain[k + 1] < gain[k]):
            best = float(gain[k])
    return best


def _forecast_table(
    model: Predictor, steps: Sequence[Step], resource: Resource
) -> dict[str, dict[str, tuple[float, float]]]:
    """(predicted success, predicted mean cost in ``resource``) per step id, then option."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for f in model.predict(steps):
        cost = getattr(f, resource)
        out.setdefault(f.step_id, {})[f.option] = (
            f.p_success,
            cost.mean if cost is not None else math.inf,
        )
    return out


def _route(row: dict[str, tuple[float, float]], price: float) -> str:
    """The option of most predicted success less ``price`` times its predicted cost."""
    return max(row, key=lambda o: row[o][0] - (price * row[o][1] if price else 0.0))


def _tune_router(
    train: Sequence[ReplayQuery],
    table: dict[str, dict[str, tuple[float, float]]],
    per_step: float,
    resource: Resource,
) -> float:
    """The price of cost at which the per-query router earns most in training within budget.

    Candidates from 0 (always the likeliest to succeed) up to prices where only the cheapest
    option is worth it; the training spend per query must fit the budget per step.
    """
    candidates = [0.0, *(10.0**e / max(per_step, 1e-12) for e in np.linspace(-4, 3, 57))]
    best: tuple[float, float] | None = None
    for price in candidates:
        value = spend = 0.0
        for q in train:
            record = q.outcomes.get(_route(table[q.query_id], price))
            if record is not None:
                value += record.score
                spend += record.cost(resource) or 0.0
        fits = spend / max(len(train), 1) <= per_step * (1 + _ROUNDING)
        if fits and (best is None or value > best[0]):
            best = (value, price)
    return candidates[-1] if best is None else best[1]


_REHEARSALS = 50
"""Episodes of the training part that `best-single` is chosen on."""


def _rehearsal(
    train: Sequence[ReplayQuery], config: BenchConfig, dearest: str, resource: Resource
) -> list[tuple[list[ReplayQuery], float]]:
    """Seeded episodes of the training part, each with its cost of always the dearest option."""
    rng = np.random.default_rng([config.seed, 1])
    size = min(config.steps, len(train))
    episodes = [
        [train[i] for i in rng.choice(len(train), size=size, replace=False)]
        for _ in range(_REHEARSALS)
    ]
    return [(ep, sum(_dearest_cost(q, dearest, resource) for q in ep)) for ep in episodes]


def _best_single(
    rehearsal: list[tuple[list[ReplayQuery], float]],
    options: Sequence[str],
    fraction: float,
    resource: Resource,
) -> str:
    """The option a team would pick after one eval: most value under this budget, on rehearsals.

    The rehearsals are episodes of the training part (`_rehearsal`).
    """

    def value(option: str) -> float:
        total = 0.0
        for episode, full in rehearsal:  # a fixed option reads no step
            total += _play(episode, (), fraction * full, resource, _fixed(option)).value
        return total

    return max(options, key=value)


def _best_pair(
    train: Sequence[ReplayQuery],
    table: dict[str, dict[str, tuple[float, float]]],
    per_step: float,
    means: dict[str, float],
    resource: Resource,
) -> tuple[tuple[str, str], float]:
    """The threshold router over the pair of options whose tuned threshold earns most in training.

    Every pair, the cheaper first: its threshold tuned as the ``threshold`` policy's is
    (`_tune_threshold`), its value per training query counted where it fits the budget per step.
    """
    best: tuple[float, tuple[str, str], float] | None = None
    ranked = sorted(means, key=lambda o: means[o])
    for k, cheap in enumerate(ranked):
        for dear in ranked[k + 1 :]:
            gains = {
                q: row.get(dear, (0.0, 0.0))[0] - row.get(cheap, (0.0, 0.0))[0]
                for q, row in table.items()
            }
            threshold = _tune_threshold(train, gains, per_step, cheap, dear, resource)
            value = spend = 0.0
            n = 0
            for q in train:
                a, b = q.outcomes.get(cheap), q.outcomes.get(dear)
                if a is None or b is None:
                    continue
                chosen = b if gains[q.query_id] >= threshold else a
                value += chosen.score
                spend += chosen.cost(resource) or 0.0
                n += 1
            if n == 0 or spend / n > per_step * (1 + _ROUNDING):
                continue
            if best is None or value / n > best[0]:
                best = (value / n, (cheap, dear), threshold)
    if best is None:  # no pair fits: the cheapest two, never upgrading
        return (ranked[0], ranked[min(1, len(ranked) - 1)]), math.inf
    return best[1], best[2]


def _fixed(option: str) -> Decide:
    def decide(steps: Sequence[Step], i: int, left: float) -> tuple[str, float]:
        return option, left

    return decide


def _random_mix(p: float, cheap: str, dear: str, rng: np.random.Generator) -> Decide:
    def decide(steps: Sequence[Step], i: int, left: float) -> tuple[str, float]:
        return (dear if rng.random() < p else cheap), left

    return decide


def _threshold(model: Predictor, threshold: float, cheap: str, dear: str) -> Decide:
    def decide(steps: Sequence[Step], i: int, left: float) -> tuple[str, float]:
        gain = _gains(model, [steps[i]], cheap, dear)[steps[i].id]
        return (dear if gain >= threshold else cheap), left

    return decide


def _router(model: Predictor, price: float, resource: Resource) -> Decide:
    """A per-query learned router: each step on its own, no plan (RouterBench / CARROT kind)."""

    def decide(steps: Sequence[Step], i: int, left: float) -> tuple[str, float]:
        row = _forecast_table(model, [steps[i]], resource)[steps[i].id]
        return _route(row, price), left

    return decide


def _ours(controller: Controller, resource: Resource, log: list[Decision] | None = None) -> Decide:
    def decide(steps: Sequence[Step], i: int, left: float) -> tuple[str, float]:
        remaining = Budget(**{resource: left if resource == "usd" else math.floor(left)})
        decision = controller.plan(steps[i:], remaining).next
        assert decision is not None
        if log is not None:
            log.append(decision)
        cap = decision.cap.get(resource)
        return decision.option, (left if cap is None else cap)

    return decide


def _oracle(episode: Sequence[ReplayQuery], budget: float, resource: Resource) -> Decide:
    names = sorted({o for q in episode for o in q.outcomes})
    n, m = len(episode), len(names) + 1
    values, costs = np.zeros((n, m)), np.zeros((n, m))
    feasible = np.zeros((n, m), dtype=bool)
    feasible[:, 0] = True
    for i, query in enumerate(episode):
        for j, name in enumerate(names, start=1):
            record = query.outcomes.get(name)
            if record is not None:
                values[i, j], costs[i, j] = record.score, record.cost(resource) or 0.0
                feasible[i, j] = True
    choice, _ = solve_milp(values, costs, feasible, [budget])
    plan = [names[j - 1] if j else SKIP for j in choice]

    def decide(steps: Sequence[Step], i: int, left: float) -> tuple[str, float]:
        return plan[i], left

    return decide


_BOOTSTRAPS = 1_000
"""Resamples of the test queries for the query-bootstrap standard errors."""


def _summarise(
    runs: dict[str, list[_Run]],
    budgets: list[float],
    unlimited: dict[str, float],
    cheapest: str,
    dearest: str,
    where: np.ndarray,
    resample: np.ndarray,
) -> dict[str, PolicyResult]:
    """Each policy's means and errors.

    ``where[e, i]``: the index of episode ``e``'s step ``i``'s query among the distinct queries
    drawn; ``resample[b, k]``: how often query ``k`` is drawn in bootstrap sample ``b``.
    """
    out: dict[str, PolicyResult] = {}
    for name, results in runs.items():
        latencies = np.array([t for r in results for t in r.latencies]) * 1e3
        out[name] = PolicyResult(
            value=float(np.mean([r.value for r in results])),
            spend=float(np.mean([r.spend for r in results])),
            budget=float(np.mean(budgets)),
            overruns=sum(
                r.spend > b * (1 + 1e-9) + 1e-12 for r, b in zip(results, budgets, strict=True)
            ),
            truncated=float(np.mean([r.truncated for r in results])),
            skipped=float(np.mean([r.skipped for r in results])),
            latency_ms_p50=float(np.percentile(latencies, 50)),
            latency_ms_p99=float(np.percentile(latencies, 99)),
        )
    oracle = out["oracle"].value
    low = unlimited[f"fixed:{cheapest}"]
    high = unlimited[f"fixed:{dearest}"]
    top = max(unlimited.values())  # the best option without a budget, not always the dearest
    # The best policy a user has without a predictor: a fixed option or the random mix.
    best = max(
        (n for n in out if n.startswith("fixed:") or n == "random-mix"), key=lambda n: out[n].value
    )
    baseline = out[best].value
    for name, result in out.items():
        values = np.array([r.value for r in runs[name]])
        result.value_se = _standard_error(values)
        result.pct_oracle = 100 * result.value / oracle if oracle > 0 else math.nan
        result.pgr = (result.value - low) / (high - low) if high != low else math.nan
        result.pgr_best = (result.value - low) / (top - low) if top != low else math.nan
        if oracle > baseline:
            result.gap_closed = (result.value - baseline) / (oracle - baseline)
            # Paired over the same episodes, the oracle's margin taken as known.
            paired = values - np.array([r.value for r in runs[best]])
            result.gap_closed_se = _standard_error(paired) / (oracle - baseline)
    # Against the best of every baseline, the routers tuned on the training part included.
    best_all = max((n for n in out if n not in ("ours", "oracle")), key=lambda n: out[n].value)
    baseline_all = out[best_all].value
    boot = {name: _query_bootstrap(results, where, resample) for name, results in runs.items()}
    for name, result in out.items():
        result.value_se_queries = float(np.std(boot[name], ddof=1))
        if oracle > baseline_all:
            values = np.array([r.value for r in runs[name]])
            margin = oracle - baseline_all
            result.gap_closed_all = (result.value - baseline_all) / margin
            paired = values - np.array([r.value for r in runs[best_all]])
            result.gap_closed_all_se = _standard_error(paired) / margin
            result.gap_closed_all_se_queries = float(
                np.std(boot[name] - boot[best_all], ddof=1) / margin
            )
    return out


def query_index(episodes: Sequence[Sequence[ReplayQuery]]) -> tuple[np.ndarray, int]:
    """Each step's query as an index into the distinct queries drawn, and how many there are.

    For the query bootstrap (`_query_bootstrap`).
    """
    ids = dict.fromkeys(q.query_id for episode in episodes for q in episode)
    drawn = {query_id: k for k, query_id in enumerate(ids)}
    return np.array([[drawn[q.query_id] for q in episode] for episode in episodes]), len(drawn)


def resamples(n: int, seed: Sequence[int]) -> np.ndarray:
    """`_BOOTSTRAPS` resamples of ``n`` queries with replacement: how often each is drawn."""
    return np.random.default_rng(list(seed)).multinomial(n, np.full(n, 1 / n), size=_BOOTSTRAPS)


def _query_bootstrap(
    results: list[_Run], where: np.ndarray | Sequence[Sequence[int]], resample: np.ndarray
) -> np.ndarray:
    """A policy's mean value per episode in each bootstrap sample of the queries."""
    earned = np.zeros(resample.shape[1])
    for run, queries in zip(results, where, strict=True):
        np.add.at(earned, queries, [step.value for step in run.steps])
    return np.asarray(resample @ earned / len(results))


def _standard_error(values: np.ndarray) -> float:
    """The standard error of the mean of ``values`` (NaN for fewer than two)."""
    if len(values) < 2:
        return math.nan
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))
