"""ComposedPredictor: the prior's level, the learned model's per-step deviation, online weights."""

import json
import math
import random
from collections.abc import Sequence

import pytest

from roi_agents.bench.simulate import fit_composed
from roi_agents.data import load_replay
from roi_agents.errors import InvalidValueError
from roi_agents.predict.calibration import (
    LEVELS,
    OWN,
    Calibration,
    Composition,
    ResidualQuantiles,
    SuccessCalibration,
)
from roi_agents.predict.composed import ComposedPredictor, fit_composition, learning, signal
from roi_agents.predict.head import lognormal_cost
from roi_agents.predict.prior import PriorPredictor
from roi_agents.types import Forecast, Option, Spend, Step

FAST = Option(name="fast")


class Reader:
    """A predictor that reads each step's difficulty from its text: ``"<logit> <log-cost>"``.

    It is off by a fixed level (``bias`` logits, ``scale`` times the cost), as a checkpoint is
    on a kind of step it never saw, while its ranking of steps is right.
    """

    def __init__(self, bias: float = 0.0, scale: float = 1.0) -> None:
        self.bias, self.scale = bias, scale
        self.last_fallback: str | None = None

    def predict(self, steps: Sequence[Step]) -> list[Forecast]:
        out = []
        for step in steps:
            logit, log_cost = (float(x) for x in step.text.split())
            for option in step.options:
                p = 1 / (1 + math.exp(-(logit + self.bias)))
                cost = lognormal_cost(log_cost + math.log(self.scale), 0.5, 1.0, count=True)
                out.append(Forecast(step_id=step.id, option=option.name, p_success=p, tokens=cost))
        return out

    async def apredict(self, steps: Sequence[Step]) -> list[Forecast]:
        return self.predict(steps)


def _step(i: int, logit: float, log_cost: float = 5.0, group: str = "g") -> Step:
    return Step(id=f"s{i}", text=f"{logit} {log_cost}", group=group, options=[FAST])


def _fitted_prior(rate: float, tokens: int, n: int = 200) -> PriorPredictor:
    prior = PriorPredictor()
    for k in range(n):
        prior.record("fast", "g", Spend(output_tokens=tokens), float(k < rate * n))
    return prior


def test_the_level_is_the_priors_and_the_learned_ranking_moves_it():
    prior = _fitted_prior(0.7, 400)
    # The checkpoint thinks every step 3 logits easier and 20 times dearer than it is.
    composed = ComposedPredictor(Reader(bias=3.0, scale=20.0), prior)
    steps = [_step(i, logit=(i - 20) / 10, log_cost=5.0 + (i - 20) / 20) for i in range(41)]
    forecasts = composed.predict(steps)
    (level,) = prior.predict([steps[20]])
    middle = forecasts[20]  # at the group's mean signal: the prior's forecast
    assert middle.p_success == pytest.approx(level.p_success, abs=1e-9)
    assert middle.tokens.p99 == level.tokens.p99
    assert middle.tokens.mean == pytest.approx(level.tokens.mean, rel=1e-3)
    assert middle.source == "prior + unknown"
    # The deviation moves it, in the learned model's direction, by weight 1 times the shrinkage.
    shrink = 41 / (41 + 10)
    logit = math.log(level.p_success / (1 - level.p_success))
    assert forecasts[40].p_success == pytest.approx(1 / (1 + math.exp(-(logit + shrink * 2))))
    assert forecasts[0].p_success < middle.p_success < forecasts[40].p_success
    ratio = (forecasts[40].tokens.mean + 1) / (level.tokens.mean + 1)
    assert ratio == pytest.approx(math.exp(shrink * 1.0), rel=1e-3)
    assert forecasts[0].tokens.p99 < middle.tokens.p99 < forecasts[40].tokens.p99
    # The learned model alone says 0.95 on average; the composed mean stays near the level
    # (a spread of logits about it pulls the mean of their sigmoids towards one half).
    mean_p = sum(f.p_success for f in forecasts) / len(forecasts)
    assert abs(mean_p - level.p_success) < 0.04


def test_a_new_group_starts_at_the_prior_and_caps_and_prices_hold():
    prior = _fitted_prior(0.5, 300)
    capped = Option(name="fast", max_tokens=350, input_price=1.0, output_price=2.0)
    composed = ComposedPredictor(Reader(), prior)
    alone = Step(id="new", text="4 9", group="unseen", options=[capped], input_tokens=100)
    (forecast,) = composed.predict([alone])
    (level,) = prior.predict([alone])
    assert forecast.p_success == level.p_success  # one step: its deviation from itself is 0
    many = [
        Step(id=f"n{i}", text=f"{i} {5 + i}", group="unseen", options=[capped], input_tokens=100)
        for i in range(8)
    ]
    for f in composed.predict(many):
        assert f.tokens.p50 <= f.tokens.p90 <= f.tokens.p99 <= 100 + 350
        assert f.tokens.p99 == int(f.tokens.p99)  # counts stay whole
        assert f.usd is not None
        assert f.usd.p99 == pytest.approx((100 * 1.0 + (f.tokens.p99 - 100) * 2.0) / 1e6)


def test_weights_learn_online_towards_zero_and_back():
    rng = random.Random(0)
    noise = ComposedPredictor(Reader(), _fitted_prior(0.5, 200))
    signal_ = ComposedPredictor(Reader(), _fitted_prior(0.5, 200))
    for i in range(400):
        d = rng.gauss(0, 1.5)
        step = _step(i, logit=d, log_cost=5 + d / 2)
        for predictor in (noise, signal_):
            predictor.predict([step])
        cost = math.exp(5 + rng.gauss(0, 0.3))
        noise.observe(step, "fast", Spend(output_tokens=round(cost)), float(rng.random() < 0.5))
        p = 1 / (1 + math.exp(-2 * d))
        signal_.observe(
            step,
            "fast",
            Spend(output_tokens=round(cost * math.exp(d))),  # twice the learned log-deviation
            float(rng.random() < p),
        )
    (noisy,) = [w for w in noise.weights() if w.group == "g"]
    (useful,) = [w for w in signal_.weights() if w.group == "g"]
    assert noisy.outcomes == 400
    assert noisy.steps == 400
    assert abs(noisy.success) < 0.3
    assert abs(noisy.cost) < 0.3
    assert useful.success > 1.4
    assert useful.cost > 1.5


def test_a_truncated_or_skipped_outcome_teaches_no_weight():
    composed = ComposedPredictor(Reader(), _fitted_prior(0.5, 200))
    step = _step(0, 1.0)
    composed.observe(step, "fast", Spend(output_tokens=5), 1.0, truncated=True)
    composed.observe(step, "skip", Spend(), None)
    assert [w.outcomes for w in composed.weights()] == [0]
    with pytest.raises(InvalidValueError, match="success"):
        composed.observe(step, "fast", Spend(output_tokens=5), 1.5)
    with pytest.raises(InvalidValueError, match="strength"):
        ComposedPredictor(Reader(), strength=-1)


def test_fit_composition_recovers_the_weights_that_made_the_outcomes():
    rng = random.Random(1)
    prior = _fitted_prior(0.6, 200, n=400)
    steps, outcomes = [], {}
    for i in range(3000):
        d = rng.gauss(0, 1.0)
        step = _step(i, logit=d, log_cost=5 + d)
        steps.append(step)
        p = 1 / (1 + math.exp(-(math.log(0.6 / 0.4) + 0.8 * d)))
        spend = Spend(output_tokens=round(200 * math.exp(0.5 * d + rng.gauss(0, 0.2))))
        outcomes[(step.id, "fast")] = (float(rng.random() < p), spend)
    learned = Reader().predict(steps)
    composition = fit_composition(steps, learned, prior, outcomes)
    assert composition.rows == 3000
    assert composition.weight("success", "fast") == pytest.approx(0.8, abs=0.12)
    assert composition.weight("cost", "fast") == pytest.approx(0.5, abs=0.05)
    assert composition.weight("cost", "never-seen") == composition.cost[OWN]
    with pytest.raises(InvalidValueError, match="no outcome"):
        fit_composition(steps, learned, prior, {})
    # Outcomes the deviations do not predict: a weight near 0, or 0 where, held out, it does
    # no better than none.
    noise = {
        key: (
            float(rng.random() < 0.6),
            Spend(output_tokens=round(200 * math.exp(rng.gauss(0, 1)))),
        )
        for key in outcomes
    }
    blind = fit_composition(steps, learned, prior, noise)
    assert abs(blind.weight("success", "fast")) < 0.1
    assert abs(blind.weight("cost", "fast")) < 0.1
    assert {OWN: 0.0} in (blind.success, blind.cost)


def _two_options(weights: dict[str, float], n: int = 1500) -> Composition:
    """Weights fitted on outcomes whose success follows the deviation by ``weights`` per option."""
    rng = random.Random(2)
    deep = Option(name="deep")
    prior = PriorPredictor()
    for k in range(400):
        for name in weights:
            prior.record(name, "g", Spend(output_tokens=200), float(k % 2 == 0))
    steps, outcomes = [], {}
    for i in range(n):
        d = rng.gauss(0, 1.5)
        step = Step(id=f"s{i}", text=f"{d} 5", group="g", options=[FAST, deep])
        steps.append(step)
        for name, w in weights.items():
            won = rng.random() < 1 / (1 + math.exp(-w * d))
            outcomes[(step.id, name)] = (float(won), Spend(output_tokens=200))
    return fit_composition(steps, Reader().predict(steps), prior, outcomes)


def test_weights_per_option_only_where_held_out_outcomes_back_them():
    # The options follow the deviation alike: one pooled weight, none per option (per option
    # they would only fit noise: on GSM8K's 133 held-out queries GPT-4's came out at 0.22
    # against a pooled 0.88, and the composed predictor lost 0.18 per episode at budget 0.5).
    alike = _two_options({"fast": 1.0, "deep": 1.0})
    assert set(alike.success) == {OWN}
    assert alike.weight("success", "deep") == pytest.approx(1.0, abs=0.15)
    # One follows it, the other does not: a weight of each's own.
    unlike = _two_options({"fast": 1.5, "deep": 0.0})
    assert set(unlike.success) == {OWN, "fast", "deep"}
    assert unlike.weight("success", "fast") == pytest.approx(1.5, abs=0.3)
    assert abs(unlike.weight("success", "deep")) < 0.2


def test_a_calibration_without_composition_loads_with_the_defaults(tmp_path):
    stored = {
        "tokens": {"z": [0.0] * 105},
        "rows": 1,
        "success": {},
    }
    (tmp_path / "calibration.json").write_text(json.dumps(stored))
    loaded = Calibration.load(tmp_path)
    assert loaded is not None
    assert loaded.composition == Composition()
    assert signal(_step(0, 0.0), Reader().predict([_step(0, 0.0)])[0])[0] == 0.0


def test_a_fallen_back_turn_serves_the_prior_and_leaves_the_means_alone():
    prior = _fitted_prior(0.6, 300)
    reader = Reader(bias=5.0)
    composed = ComposedPredictor(reader, prior)
    steps = [_step(i, logit=i - 5.0) for i in range(11)]
    before = composed.predict(steps)
    reader.last_fallback = "ConnectError: down"  # as VLLMPredictor says it served its fallback
    assert composed.predict(steps) == prior.predict(steps)
    (mean,) = composed.weights()
    assert mean.steps == 11
    # An outcome of a step forecast before the fall back still teaches the weights.
    composed.observe(steps[3], "fast", Spend(output_tokens=300), 1.0)
    assert composed.weights()[0].outcomes == 1
    # One never forecast, asked while the server is down, teaches the prior alone.
    composed.observe(_step(99, 3.0), "fast", Spend(output_tokens=300), 1.0)
    assert composed.weights()[0].outcomes == 1
    assert composed.weights()[0].steps == 11
    reader.last_fallback = None
    assert composed.predict(steps) != before  # the prior learned two outcomes meanwhile


def test_the_integrations_compose_a_learned_predictor_that_does_not_learn():
    prior = PriorPredictor()
    assert learning(None, prior) is prior
    assert isinstance(learning(None), PriorPredictor)
    assert learning(prior) is prior  # a learner is taught as it is
    composed = learning(Reader(), prior)
    assert isinstance(composed, ComposedPredictor)
    assert composed.prior is prior


class Calibrated(PriorPredictor):
    """A real predictor that carries a checkpoint's calibration, as `LocalPredictor` does."""

    def __init__(self, groups: dict[str, dict[str, float]]) -> None:
        super().__init__(default_p_success=0.9)
        success = SuccessCalibration(group_rates=groups)
        self.calibration = Calibration(
            tokens=ResidualQuantiles(z=tuple(range(len(LEVELS)))), rows=1, success=success
        )


def test_the_bench_teaches_weights_only_in_groups_the_checkpoint_never_saw(shared_data):
    queries = load_replay(shared_data / "gsm8k.jsonl")[:200]
    unseen = fit_composed(Calibrated({}), group_by=True)(queries)
    assert unseen.known_groups == frozenset()
    (pooled,) = [w for w in unseen.weights() if w.group == "gsm8k"][:1]
    assert pooled.outcomes == 200  # one option's outcomes
    assert pooled.steps == 200
    seen = fit_composed(Calibrated({"gsm8k": {}}), group_by=True)(queries)
    assert seen.known_groups == {"gsm8k"}
    assert seen.weights() == []  # nothing forecast, nothing taught: the checkpoint's weights
    # Either way the prior learned every outcome: the level is the training part's rate.
    step = Step(id="x", group="gsm8k", options=[Option(name="gpt-4-1106-preview")])
    rate = sum(q.outcomes["gpt-4-1106-preview"].score for q in queries) / len(queries)
    for composed in (seen, unseen):
        p = composed.prior.predict([step])[0].p_success
        assert p == pytest.approx(rate, abs=0.03)


def test_held_queries_refit_the_checkpoints_weights_on_those_given(shared_data):
    queries = load_replay(shared_data / "gsm8k.jsonl")[:200]
    checkpoint = Calibrated({"gsm8k": {}})  # its own weights: 1 (the defaults)
    held = {q.query_id for q in queries[::4]}
    refit = fit_composed(checkpoint, group_by=True, held=lambda q: q.query_id in held)
    composed = refit(queries)
    # Its forecasts are the same for every step: a deviation that predicts nothing, weighed 0,
    # fitted on the held queries' rows alone.
    assert composed.composition.rows == len(held) * len(queries[0].outcomes)
    assert composed.composition.weight("success", "gpt-4-1106-preview") == 0.0
    assert composed.composition.weight("cost", "gpt-4-1106-preview") == 0.0
    # Given none of the held queries, the checkpoint's weights stand.
    alone = refit([q for q in queries if q.query_id not in held])
    assert alone.composition == checkpoint.calibration.composition
    # The prior learned every outcome either way.
    assert composed.prior.predict([_gsm8k_step()]) == (
        fit_composed(checkpoint, group_by=True)(queries).prior.predict([_gsm8k_step()])
    )


def _gsm8k_step() -> Step:
    return Step(id="x", group="gsm8k", options=[Option(name="gpt-4-1106-preview")])


def test_follow_scales_the_deviation_and_zero_is_the_prior():
    prior = _fitted_prior(0.7, 400)
    steps = [_step(i, logit=(i - 20) / 10, log_cost=5.0 + (i - 20) / 20) for i in range(41)]
    full = ComposedPredictor(Reader(bias=3.0, scale=20.0), prior).predict(steps)
    half = ComposedPredictor(Reader(bias=3.0, scale=20.0), prior, follow=0.5).predict(steps)
    none = ComposedPredictor(Reader(bias=3.0, scale=20.0), prior, follow=0.0).predict(steps)
    (level,) = prior.predict([steps[40]])

    def logit(p):
        return math.log(p / (1 - p))

    moved = logit(full[40].p_success) - logit(level.p_success)
    assert logit(half[40].p_success) - logit(level.p_success) == pytest.approx(moved / 2)
    for forecast in none:
        assert forecast.p_success == pytest.approx(level.p_success, abs=1e-12)
        assert forecast.tokens.mean == pytest.approx(level.tokens.mean, rel=1e-9)
    with pytest.raises(InvalidValueError, match="follow"):
        ComposedPredictor(Reader(), prior, follow=-1.0)


def test_following_very_far_keeps_forecasts_valid():
    prior = _fitted_prior(0.7, 400)
    steps = [_step(i, logit=(i - 5) * 10.0, log_cost=5.0 + (i - 5) * 10.0) for i in range(11)]
    for forecast in ComposedPredictor(Reader(), prior, follow=1e300).predict(steps):
        assert 0.0 <= forecast.p_success <= 1.0
        assert forecast.tokens.p99 < 1e15
