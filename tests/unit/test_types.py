import math

import pytest
from pydantic import ValidationError

import roi_agents
from roi_agents import (
    Budget,
    BudgetExceeded,
    Cap,
    CostForecast,
    Forecast,
    InvalidValueError,
    Option,
    Spend,
    Step,
)


def test_public_surface_is_explicit():
    assert sorted(roi_agents.__all__) == sorted(set(roi_agents.__all__))
    for name in roi_agents.__all__:
        assert hasattr(roi_agents, name), name


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Budget(tokens=-1), "tokens"),
        (lambda: Budget(usd=math.nan), "usd"),
        (lambda: Budget(usd=math.inf), "usd"),
        (lambda: Spend(output_tokens=-5), "output_tokens"),
        (lambda: Step(id="s", weight=-1, options=[Option(name="a")]), "weight"),
        (lambda: Step(id="s", options=[]), "options"),
        (lambda: Step(id="s", options=[Option(name="a"), Option(name="a")]), "duplicate"),
        (lambda: Option(name="a", max_tokens=0), "max_tokens"),
        (lambda: CostForecast(mean=1, p50=5, p90=4, p99=6), "out of order"),
        (lambda: CostForecast(mean=math.nan, p50=1, p90=2, p99=3), "mean"),
        (
            lambda: Forecast(step_id="s", option="a", p_success=1.2, tokens=CostForecast.exact(1)),
            "p_success",
        ),
        (
            lambda: Forecast(
                step_id="s", option="a", p_success=math.nan, tokens=CostForecast.exact(1)
            ),
            "p_success",
        ),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(build, field):
    with pytest.raises(ValueError, match=field) as info:
        build()
    assert isinstance(info.value, ValidationError)


def test_unknown_option_raises_naming_it():
    step = Step(id="s", options=[Option(name="fast")])
    with pytest.raises(InvalidValueError, match="deep") as info:
        step.option("deep")
    assert info.value.field == "option"
    assert step.option("skip").name == "skip"


def test_spend_adds_and_budget_subtracts():
    spend = Spend(input_tokens=10, output_tokens=5, usd=0.25) + Spend(tool_calls=2, usd=0.5)
    assert (spend.tokens, spend.usd, spend.tool_calls) == (15, 0.75, 2)
    left = Budget(tokens=100, usd=1.0).remaining_after(spend)
    assert left == Budget(tokens=85, usd=0.25)
    assert left.tool_calls is None


def test_budget_refuses_an_overspend_with_the_numbers():
    with pytest.raises(BudgetExceeded) as info:
        Budget(tokens=10).remaining_after(Spend(input_tokens=8, output_tokens=5))
    assert (info.value.resource, info.value.limit, info.value.requested) == ("tokens", 10, 13)


def test_cap_turns_into_max_output_tokens():
    option = Option(name="gpt", max_tokens=500, input_price=10, output_price=30)
    assert Cap(tokens=300).max_output_tokens(100, option) == 200
    assert Cap(tokens=5000).max_output_tokens(100, option) == 500
    # 0.001 USD: 100 input tokens cost 0.001 at 10/M, nothing left for output.
    assert Cap(usd=0.001).max_output_tokens(100, option) == 0
    assert Cap(usd=0.004).max_output_tokens(100, option) == 100
    with pytest.raises(InvalidValueError):
        Cap().max_output_tokens(10, Option(name="x"))


def test_left_after_floors_an_overspend_instead_of_raising():
    budget = Budget(tokens=100, usd=1.0)
    assert budget.left_after(Spend(output_tokens=30, usd=0.25)) == Budget(tokens=70, usd=0.75)
    assert budget.left_after(Spend(output_tokens=130, usd=2.0)) == Budget(tokens=0, usd=0.0)


def test_usd_forecast_prices_prompt_and_output_tokens():
    option = Option(name="gpt", input_price=10, output_price=30)
    tokens = CostForecast(mean=300, p50=250, p90=400, p99=1000)
    usd = option.usd_forecast(tokens, 200)
    assert (usd.p50, usd.p99) == pytest.approx((200e-5 + 50 * 30e-6, 200e-5 + 800 * 30e-6))
    # Prompt size unknown: every token at the dearer rate, never below the true cost.
    assert option.usd_forecast(tokens, None).p90 == pytest.approx(400 * 30e-6)
    assert option.priced
    assert not Option(name="free").priced
