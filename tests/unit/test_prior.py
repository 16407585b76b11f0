import math

import pytest

from roi_agents import InvalidValueError, Option, PriorPredictor, Spend, Step


def _step(group=None, input_tokens=None, options=("fast", "deep")):
    return Step(
        id="q", group=group, input_tokens=input_tokens, options=[Option(name=o) for o in options]
    )


def test_beta_posterior_and_shrinkage_towards_the_option():
    prior = PriorPredictor(prior_strength=10, default_p_success=0.5)
    step = _step(group="math", options=("a", "b"))  # no effort level: the default applies
    for _ in range(30):
        prior.observe(step, "a", Spend(output_tokens=100), success=1.0)
    for _ in range(10):
        prior.record("a", "poetry", Spend(output_tokens=100), success=0.0)
    # Option level: (10 * 0.5 + 30) / (10 + 40) = 0.7.
    other = prior.predict([_step(group="history", options=("a", "b"))])[0]
    assert other.p_success == pytest.approx(0.7)
    # Group level: (10 * 0.7 + 30) / (10 + 30).
    math_fc = prior.predict([step])[0]
    assert math_fc.p_success == pytest.approx((7 + 30) / 40)
    assert math_fc.source == "prior"
    # An option never seen: the default.
    assert prior.predict([step])[1].p_success == pytest.approx(0.5)


def test_with_no_outcomes_an_option_starts_from_its_expectation_or_effort_level():
    options = (
        Option(name="fast", max_tokens=256),
        Option(name="careful", tags=("deep",), max_tokens=2048),
        Option(name="gpt", expected_success=0.9),
        Option(name="other"),
    )
    forecasts = PriorPredictor().predict([Step(id="q", options=options)])
    assert [f.p_success for f in forecasts] == pytest.approx([0.4, 0.6, 0.9, 0.5])
    # Outcomes overrule it: 40 failures of "careful" bring it near 0.
    prior = PriorPredictor()
    for _ in range(40):
        prior.record("careful", None, Spend(output_tokens=100), success=0.0)
    assert prior.predict([Step(id="q", options=options)])[1].p_success == pytest.approx(6 / 50)


def test_a_budget_that_pays_for_deep_buys_it_with_no_history():
    from roi_agents import Budget, Controller

    options = (Option(name="fast", max_tokens=256), Option(name="deep", max_tokens=2048))
    steps = [Step(id=f"s{i}", options=options, input_tokens=40) for i in range(2)]
    prior = PriorPredictor()
    rich = Controller(predictor=prior).plan(steps, Budget(tokens=6_000))
    assert [d.option for d in rich.decisions] == ["deep", "deep"]
    poor = Controller(predictor=prior).plan(steps, Budget(tokens=700))
    assert [d.option for d in poor.decisions] == ["fast", "fast"]


def test_graded_scores_count_fractionally():
    prior = PriorPredictor(prior_strength=1, default_p_success=0.0)
    step = _step()
    prior.observe(step, "fast", Spend(), success=0.5)
    prior.observe(step, "fast", Spend(), success=0.5)
    assert prior.predict([step])[0].p_success == pytest.approx(1 / 3)


def test_lognormal_cost_fit_and_known_input():
    prior = PriorPredictor(group_by=False)
    step = _step()
    outputs = [50, 100, 200, 400, 800]
    for out in outputs:
        prior.observe(step, "fast", Spend(input_tokens=100, output_tokens=out), success=1)
    logs = [math.log(o + 1) for o in outputs]
    mu = sum(logs) / len(logs)
    sigma = math.sqrt(sum((x - mu) ** 2 for x in logs) / (len(logs) - 1))
    fc = prior.predict([_step(input_tokens=30)])[0]
    # Token quantiles are whole: the log-normal's, rounded; the mean is not.
    assert fc.tokens.p50 == 30 + round(math.exp(mu) - 1)
    assert fc.tokens.p90 == 30 + round(math.exp(mu + 1.2815515655446004 * sigma) - 1)
    assert fc.tokens.mean == pytest.approx(30 + math.exp(mu + sigma**2 / 2) - 1)
    assert fc.tokens.p50 < fc.tokens.mean < fc.tokens.p99
    # Without a known prompt size: the fit of total tokens.
    total = prior.predict([step])[0]
    assert total.tokens.p50 == round(math.exp(sum(math.log(100 + o + 1) for o in outputs) / 5) - 1)


def test_usd_from_prices_or_from_history():
    prior = PriorPredictor()
    priced = Step(
        id="p", input_tokens=1000, options=[Option(name="m", input_price=1.0, output_price=2.0)]
    )
    for out in (100, 100, 100):
        prior.observe(priced, "m", Spend(input_tokens=1000, output_tokens=out, usd=0.5), 1)
    fc = prior.predict([priced])[0]
    assert fc.usd is not None
    assert fc.usd.p50 == pytest.approx((1000 * 1.0 + 100 * 2.0) / 1e6)
    unpriced = prior.predict([_step(options=("m",))])[0]
    assert unpriced.usd is not None
    assert unpriced.usd.p50 == pytest.approx(0.5, rel=1e-5)


def test_bad_inputs():
    with pytest.raises(InvalidValueError, match="prior_strength"):
        PriorPredictor(prior_strength=0)
    prior = PriorPredictor()
    with pytest.raises(InvalidValueError, match="success"):
        prior.observe(_step(), "fast", Spend(), success=1.5)
    with pytest.raises(InvalidValueError, match="nope"):
        prior.observe(_step(), "nope", Spend(), success=1)
    with pytest.raises(InvalidValueError, match="success"):
        prior.record("fast", None, Spend(), success=math.nan)


async def test_apredict_equals_predict():
    prior = PriorPredictor()
    assert await prior.apredict([_step()]) == prior.predict([_step()])


def test_forecasts_never_exceed_the_options_max_tokens():
    prior = PriorPredictor()  # no history: the default is a median of 512 output tokens
    step = Step(
        id="q", input_tokens=40, options=[Option(name="quick", max_tokens=64), Option(name="open")]
    )
    quick, open_ended = prior.predict([step])
    assert quick.tokens.p99 == pytest.approx(40 + 64)
    assert quick.tokens.mean <= 40 + 64
    assert open_ended.tokens.p99 > 40 + 512


def test_a_heavy_tail_raises_the_p99_once_there_are_enough_costs():
    import numpy as np

    from roi_agents.predict.prior import TAIL_ROWS

    rng = np.random.default_rng(0)
    # 90% answer in about 100 tokens, 10% think 30 times longer: far from a log-normal.
    outputs = [
        int(100 * rng.lognormal(0, 0.2) * (30 if rng.uniform() < 0.1 else 1)) for _ in range(2000)
    ]
    prior = PriorPredictor(group_by=False)
    for i, out in enumerate(outputs):
        if i == TAIL_ROWS - 1:
            few = prior.predict([_step(input_tokens=0)])[0].tokens
        prior.observe(_step(), "fast", Spend(output_tokens=out), success=1)
    many = prior.predict([_step(input_tokens=0)])[0].tokens
    logs = np.log(np.asarray(outputs) + 1.0)
    lognormal_p99 = math.exp(logs.mean() + 2.3263478740408408 * logs.std(ddof=1)) - 1
    # Below TAIL_ROWS costs the p99 is the log-normal's; then it covers the tail.
    assert few.p99 == pytest.approx(
        math.exp(
            np.mean(logs[: TAIL_ROWS - 1])
            + 2.3263478740408408 * np.std(logs[: TAIL_ROWS - 1], ddof=1)
        )
        - 1,
        abs=1,
    )
    assert many.p99 > 1.5 * lognormal_p99
    assert np.mean(np.asarray(outputs) > many.p99) <= 0.011
    assert np.mean(np.asarray(outputs) > lognormal_p99) > 0.05
    # The plan's p90 stays the log-normal's; the mean is the costs' own, which the log-normal
    # understates (a plan budgeting the run's total at its means would overspend).
    assert many.p90 == round(math.exp(logs.mean() + 1.2815515655446004 * logs.std(ddof=1)) - 1)
    lognormal_mean = math.exp(logs.mean() + logs.var(ddof=1) / 2) - 1
    assert lognormal_mean < 0.9 * np.mean(outputs)
    assert many.mean == pytest.approx(np.mean(outputs), rel=0.03)


def test_an_ungraded_outcome_teaches_the_cost_and_not_the_success():
    prior = PriorPredictor()
    step = _step(options=("deep",))
    untaught = prior.predict([step])[0]
    for _ in range(20):
        prior.observe(step, "deep", Spend(output_tokens=50), success=None)
    taught = prior.predict([step])[0]
    assert taught.p_success == untaught.p_success == pytest.approx(0.6)
    assert taught.tokens.p50 < untaught.tokens.p50 / 5


def test_a_forecast_remembered_between_outcomes_is_the_one_it_would_make():
    prior = PriorPredictor()
    a = Step(id="a", group="g", options=[Option(name="deep")], input_tokens=10)
    b = a.model_copy(update={"id": "b"})
    first = prior.predict([a, b])
    assert [f.step_id for f in first] == ["a", "b"]
    assert first[0].model_copy(update={"step_id": "b"}) == first[1]
    prior.observe(a, "deep", Spend(input_tokens=10, output_tokens=40), success=0.0)
    after = prior.predict([b])[0]  # an outcome forgets what was remembered
    assert after.p_success < first[1].p_success
    assert after.tokens.p50 < first[1].tokens.p50
    # A different prompt size, group or option is a different forecast.
    other = [
        a.model_copy(update={"input_tokens": 99}),
        a.model_copy(update={"group": "h"}),
        a.model_copy(update={"options": (Option(name="deep", max_tokens=5),)}),
    ]
    assert (
        len(
            {f.model_copy(update={"step_id": ""}) for f in prior.predict(other)}
            | {after.model_copy(update={"step_id": ""})}
        )
        == 4
    )
