"""Success maps, split-conformal cost maps, and forecasts made through them."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roi_agents import Option, Step
from roi_agents.errors import InvalidValueError
from roi_agents.predict.calibration import (
    LEVELS,
    OWN,
    PROMPT,
    Calibration,
    Maps,
    ResidualQuantiles,
    SuccessCalibration,
    SuccessMap,
    conformal_quantiles,
    fit_success,
    option_set,
)
from roi_agents.predict.head import forecasts, head_labels, input_text, model_input, own_row


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_a_success_map_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    logit = rng.normal(0, 1, 20_000)
    outcome = (rng.uniform(0, 1, logit.size) < 1 / (1 + np.exp(-logit))).astype(float)
    said = 3 * logit  # three times too sure of itself
    fitted = fit_success({OWN: said.tolist()}, [0.5] * logit.size, outcome.tolist())
    assert fitted.weights[OWN] == pytest.approx(1 / 3, abs=0.02)
    for true_logit in (-1.0, 0.0, 1.5):
        p = fitted.p_success("o", {"o": 3 * true_logit}, 0.5)
        assert p == pytest.approx(_sigmoid(true_logit), abs=0.02)


def test_a_success_map_reads_the_group_base_rate():
    # The model's logit is noise; each group's own success rate is all there is to know.
    rng = np.random.default_rng(3)
    rates = rng.choice([0.2, 0.5, 0.8], 6000)
    outcome = (rng.uniform(0, 1, rates.size) < rates).astype(float)
    fitted = fit_success({OWN: rng.normal(0, 1, rates.size).tolist()}, rates.tolist(), outcome)
    assert abs(fitted.weights[OWN]) < 0.05
    for rate in (0.2, 0.8):
        assert fitted.p_success("o", {"o": 0.0}, rate) == pytest.approx(rate, abs=0.03)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=1, max_size=60),
    st.lists(st.floats(-5, 5), min_size=60, max_size=60),
    st.floats(0.01, 0.99),
)
def test_a_map_has_no_intercept(outcome, logits, rate):
    # The held-out rows fit how far a step's logits move it from the level, and how far out
    # the level's logit sits; no row moves a step at its centre from an even level.
    fitted = fit_success({OWN: logits[: len(outcome)]}, [rate] * len(outcome), outcome)
    assert all(math.isfinite(w) for w in [*fitted.weights.values(), fitted.level])
    assert fitted.p_success("o", {"o": 0.0}, 0.5) == pytest.approx(0.5)
    assert fitted.p_success("o", {"o": 0.0}, rate) == pytest.approx(
        _sigmoid(fitted.level * math.log(rate / (1 - rate)))
    )
    p = fitted.p_success("o", {"o": 5.0}, rate)
    assert p is not None
    assert 0.0 <= p <= 1.0


def test_the_mean_forecast_keeps_the_base_rate_however_spread_the_logits():
    # Steps spread about their centre: the sigmoid of the level alone would pull the mean
    # forecast towards one half (0.8 -> 0.70 here); the level's weight undoes that.
    rng = np.random.default_rng(5)
    centred = rng.normal(0, 2, 20_000)
    true = 1 / (1 + np.exp(-(2.2 + centred)))  # mean about 0.8
    outcome = (rng.uniform(0, 1, true.size) < true).astype(float)
    rate = float(true.mean())
    fitted = fit_success({OWN: centred.tolist()}, [rate] * true.size, outcome.tolist())
    assert fitted.level > 1.3
    mean_p = np.mean([fitted.p_success("o", {"o": c}, rate) for c in centred[:2000]])
    assert mean_p == pytest.approx(true[:2000].mean(), abs=0.01)
    assert SuccessMap(weights=fitted.weights).p_success("o", {"o": 0.0}, rate) == pytest.approx(
        rate
    )


def test_fit_success_rejects_rows_that_do_not_line_up():
    with pytest.raises(InvalidValueError):
        fit_success({}, [], [])
    with pytest.raises(InvalidValueError):
        fit_success({OWN: [0.0, 1.0]}, [0.5, 0.5], [1.0])
    with pytest.raises(InvalidValueError):
        fit_success({OWN: [0.0]}, [], [1.0])


def test_conformal_quantiles_cover_new_draws_at_their_level():
    rng = np.random.default_rng(1)
    held_out = rng.standard_t(3, 2000)  # heavy tails: a Gaussian spread would under-cover
    z = conformal_quantiles(held_out.tolist())
    fresh = rng.standard_t(3, 200_000)
    for level in (0.5, 0.9, 0.99):
        assert float(np.mean(fresh <= z.at(level))) == pytest.approx(level, abs=0.01)
    inside = np.mean((fresh >= z.at(0.05)) & (fresh <= z.at(0.95)))
    assert inside == pytest.approx(0.9, abs=0.015)


def test_conformal_rank_is_the_finite_sample_one():
    z = conformal_quantiles([float(i) for i in range(1, 10)])  # n = 9
    assert z.at(0.9) == 9.0  # ceil(10 * 0.9) = 9th smallest
    assert z.at(0.5) == 5.0
    assert z.at(0.05) == 1.0  # floor below the median, at least the first
    with pytest.raises(InvalidValueError):
        conformal_quantiles([])
    with pytest.raises(InvalidValueError):
        conformal_quantiles([1.0, math.nan])


def test_a_small_sample_takes_the_tail_it_cannot_bound_from_a_larger_one():
    rng = np.random.default_rng(4)
    wide = conformal_quantiles(rng.standard_t(3, 5000).tolist())
    few = rng.normal(0, 1, 50).tolist()  # 50 rows bound levels up to 50/51 only
    alone, bounded = conformal_quantiles(few), conformal_quantiles(few, beyond=wide)
    assert alone.at(0.99) == max(few)
    assert bounded.at(0.99) == max(max(few), wide.at(0.99)) > alone.at(0.99)
    assert bounded.at(0.005) == min(min(few), wide.at(0.005))
    for level in (0.05, 0.5, 0.9, 0.95):  # levels the 50 rows bound are their own
        assert bounded.at(level) == alone.at(level)


def _calibration(shift=0.0):
    # The shared success map: raw logit 0 -> the base rate 0.2.
    rates = {"o": 0.2, "cheap": 0.2, "deep": 0.2}
    return Calibration(
        success=SuccessCalibration(shared=SuccessMap(weights={OWN: 1.0}), option_rates=rates),
        tokens=conformal_quantiles((np.linspace(-2, 2, 401) + shift).tolist()),
        rows=401,
    )


def test_save_load_round_trip_and_bad_files(tmp_path):
    calibration = _calibration()
    calibration.save(tmp_path)
    assert Calibration.load(tmp_path) == calibration
    assert Calibration.load(tmp_path / "nowhere") is None
    (tmp_path / "calibration.json").write_text('{"rows": 3}')
    with pytest.raises(InvalidValueError, match="calibration"):
        Calibration.load(tmp_path)
    older = calibration.model_dump()
    older["success"]["shared"].update(bias=0.3, rate=1.0)  # an earlier release's map
    (tmp_path / "calibration.json").write_text(json.dumps(older))
    with pytest.raises(InvalidValueError, match="bias"):
        Calibration.load(tmp_path)
    with pytest.raises(ValueError, match="must not decrease"):
        ResidualQuantiles(z=tuple(reversed(calibration.tokens.z)))
    assert len(calibration.tokens.z) == len(LEVELS)


def test_base_rates_and_centres_fall_back_from_group_to_option():
    success = SuccessCalibration(
        option_rates={"fast": 0.4, "deep": 0.8},
        group_rates={"math": {"deep": 0.9}},
        held_out_rates={"deep": 0.7},
        option_centres={"fast": -1.0, "deep": 2.0},
        group_centres={"math": {"deep": 3.0}},
    )
    assert success.base_rate("deep", "math") == 0.9
    assert success.base_rate("deep", "law") == 0.7  # the held-out rows' rate, as their centre
    assert success.base_rate("fast", "math") == 0.4
    assert success.base_rate("new", None) == pytest.approx(0.6)
    assert success.option_rate("deep") == 0.8  # the Brier score's baseline: fine-tuning rows
    assert success.centred("math", {"deep": 1.0, "fast": 1.0, "new": 1.0}) == {
        "deep": -2.0,
        "fast": 2.0,
        "new": 1.0,
        PROMPT: 0.0,  # no prompt centre: the prompt size is not read
    }
    sized = success.model_copy(update={"prompt_centre": 3.0, "group_prompt_centres": {"math": 5.0}})
    # log(402 + 1) less the group's centre, or the overall one for a step without a group.
    assert sized.centred("math", {}, input_tokens=402)[PROMPT] == math.log(403) - 5.0
    assert sized.centred(None, {}, input_tokens=402)[PROMPT] == math.log(403) - 3.0
    assert sized.centred("law", {}, input_tokens=402)[PROMPT] == 0.0  # a group never held out
    assert sized.centred("math", {}, input_tokens=None)[PROMPT] == 0.0
    assert success.centre("deep", None) == 2.0
    unfitted = SuccessCalibration()  # the raw probability
    assert unfitted.base_rate("new", "math") == 0.5
    assert unfitted.p("new", "math", {"new": 1.5}) == pytest.approx(_sigmoid(1.5))


def test_the_most_specific_maps_apply():
    shared, deep, deep_math = _calibration(), _calibration(1.0), _calibration(2.0)
    only_maps = {"by_option", "by_group", "success"}
    calibration = shared.model_copy(
        update={
            "by_option": {"deep": Maps(**deep.model_dump(exclude=only_maps))},
            "by_group": {"math": {"deep": Maps(**deep_math.model_dump(exclude=only_maps))}},
        }
    )
    assert calibration.maps("deep", "math").tokens == deep_math.tokens
    assert calibration.maps("deep", "law").tokens == deep.tokens
    assert calibration.maps("deep").tokens == deep.tokens
    assert calibration.maps("fast", "math").tokens == shared.tokens
    step = Step(id="s", text="t", group="math", options=(Option(name="x", tags=("deep",)),))
    (grouped,) = forecasts([step], [[0.0, 4.0, 0.0]], source="local", calibration=calibration)
    assert grouped.tokens.p50 == round(math.exp(6.0) - 1)  # whole tokens


def test_forecasts_through_the_calibration():
    step = Step(id="s", text="t", input_tokens=10, options=(Option(name="o", max_tokens=500),))
    row = [[0.0, 4.0, 0.0]]
    # logit 0 -> raw 0.5 -> 0.2; log-token mean 4 with spread e^0 = 1.
    (calibrated,) = forecasts([step], row, source="local", calibration=_calibration(shift=1.0))
    (raw,) = forecasts([step], row, source="local")
    assert raw.p_success == pytest.approx(0.5)
    assert calibrated.p_success == pytest.approx(0.2)
    # Residuals shifted up by 1: the median is e^(4 + 1) - 1 output tokens (whole), plus the
    # prompt.
    assert calibrated.tokens.p50 == 10 + round(math.exp(5.0) - 1)
    assert calibrated.tokens.p50 <= calibrated.tokens.p90 <= calibrated.tokens.p99 <= 510
    assert calibrated.tokens.p99 == pytest.approx(510)  # capped at the option's max_tokens


def test_an_option_reads_its_own_success_output_where_the_head_has_one():
    labels = head_labels(False, ["deep"])
    assert own_row([0.1, 4.0, 0.0, -3.0], "deep", labels) == [-3.0, 4.0, 0.0]
    assert own_row([0.1, 4.0, 0.0, -3.0], "cheap", labels) == [0.1, 4.0, 0.0]
    # A head may carry an option's own version of any output.
    usd = (*head_labels(True, ["a"]), "log_usd_mean[a]", "log_tokens_mean[b]")
    assert own_row(list(range(8)), "a", usd) == [5, 1, 2, 6, 4]
    assert own_row(list(range(8)), "b", usd) == [0, 7, 2, 3, 4]
    with pytest.raises(InvalidValueError, match="3 outputs for a head of 4"):
        own_row([0.1, 4.0, 0.0], "deep", labels)
    # A server's rows are read by the labels the calibration stores, a local head's by its own.
    deep = Option(name="x", tags=("deep",))
    step = Step(id="s", text="t", options=(deep, Option(name="cheap")))
    rows = [[0.0, 4.0, 0.0, 9.0], [0.0, 4.0, 0.0, 9.0]]
    calibration = _calibration().model_copy(update={"labels": labels})
    served = forecasts([step], rows, source="vllm", calibration=calibration)
    local = forecasts([step], rows, source="local", labels=labels)
    assert [f.p_success for f in local] == pytest.approx([1 / (1 + math.exp(-9.0)), 0.5])
    assert served[0].p_success > 0.99 > 0.2 == pytest.approx(served[1].p_success)
    with pytest.raises(InvalidValueError, match="needs its labels"):
        forecasts([step], rows, source="vllm")


def test_long_texts_are_cut_the_same_way_everywhere():
    text = "a" * 300 + "b" * 300
    cut = model_input(("deep",), text)
    assert cut.startswith("[deep] " + "a" * 256)
    assert cut.endswith("b" * 256)
    assert " ... " in cut
    assert len(cut) == len("[deep] ") + 256 * 2 + 5
    step = Step(id="s", text=text, options=(Option(name="x", tags=("deep",)),))
    assert input_text(step, step.options[0]) == cut
    assert model_input((), "short") == "short"


def test_a_set_map_learns_one_option_from_the_others_logit():
    # The dear option's own logit is noise; whether it succeeds follows the cheap one's.
    rng = np.random.default_rng(2)
    cheap, dear = rng.normal(0, 1, 8000), rng.normal(0, 1, 8000)
    outcome = rng.uniform(0, 1, cheap.size) < 1 / (1 + np.exp(-(1.5 + cheap)))
    logits = {"cheap": cheap.tolist(), "dear": dear.tolist()}
    rate = _sigmoid(1.5)
    fitted = fit_success(logits, [rate] * cheap.size, outcome.tolist())
    assert fitted.weights["cheap"] == pytest.approx(1.0, abs=0.1)
    assert fitted.weights["dear"] == pytest.approx(0.0, abs=0.1)
    w = fitted.weights
    assert fitted.p_success("dear", {"cheap": 0.5, "dear": 9.0}, rate) == pytest.approx(
        _sigmoid(fitted.level * 1.5 + 0.5 * w["cheap"] + 9 * w["dear"])
    )
    assert fitted.p_success("dear", {"dear": 0.0}, rate) is None  # a logit it reads is missing


def test_set_maps_apply_when_the_step_offers_exactly_their_options(tmp_path):
    deep_map = SuccessMap(weights={"cheap": -2.0, "deep": 0.0})
    calibration = _calibration()
    success = calibration.success.model_copy(
        update={
            "by_set": {option_set(["deep", "cheap"]): {"deep": deep_map}},
            "group_centres": {"math": {"cheap": 0.5}},
        }
    )
    calibration = calibration.model_copy(update={"success": success})
    calibration.save(tmp_path)
    assert Calibration.load(tmp_path) == calibration
    step = Step(
        id="s",
        text="t",
        group="math",
        options=(Option(name="cheap"), Option(name="deep")),
    )

    def deep(cheap_logit: float) -> float:
        rows = [[cheap_logit, 4.0, 0.0], [0.0, 4.0, 0.0]]
        return forecasts([step], rows, source="local", calibration=calibration)[1].p_success

    # The deep option's own logit is the same; the cheap one's, less its centre in the
    # group, moves its probability from the base rate 0.2.
    level = math.log(0.2 / 0.8)
    assert deep(0.5) == pytest.approx(0.2)
    assert deep(1.0) == pytest.approx(_sigmoid(level - 1.0))
    assert deep(-1.0) == pytest.approx(_sigmoid(level + 3.0))
    alone = Step(id="a", text="t", group="math", options=(Option(name="deep"),))
    shared = forecasts([alone], [[0.0, 4.0, 0.0]], source="local", calibration=calibration)
    assert shared[0].p_success == pytest.approx(0.2)  # the shared map: raw logit 0 -> 0.2
    with pytest.raises(InvalidValueError, match="rows"):
        forecasts([step], [[0.0, 4.0, 0.0]], source="local", calibration=calibration)


def test_a_priced_option_with_a_known_prompt_prices_the_token_forecast():
    priced = Option(name="o", input_price=10, output_price=30)
    step = Step(id="s", text="t", input_tokens=1000, options=(priced, Option(name="free")))
    # Outputs 3 and 4 (a USD guess from the cut text) say 1 USD; the price list wins.
    rows = [[0.0, 4.0, -5.0, 0.0, -5.0]] * 2
    by_prices, from_head = forecasts([step], rows, source="local")
    output = round(math.exp(4.0) - 1)  # whole tokens
    assert by_prices.usd.p50 == pytest.approx((1000 * 10 + output * 30) / 1e6, rel=1e-9)
    assert from_head.usd.p50 == pytest.approx(1.0, rel=1e-3)
    # Without the prompt's size the head's guess stands.
    unsized = Step(id="s", text="t", options=(priced,))
    assert forecasts([unsized], rows[:1], source="local")[0].usd.p50 == pytest.approx(1, rel=1e-3)


def test_token_quantiles_are_whole_and_a_pinned_count_is_exact():
    step = Step(id="s", text="t", input_tokens=40, options=(Option(name="o"),))
    # log(1 + 1) with a spread so small that every raw quantile is within 0.05 of one output token.
    for mu in (math.log(2.0) - 0.005, math.log(2.0) + 0.0003):
        (forecast,) = forecasts([step], [[0.0, mu, -8.0]], source="local")
        assert (forecast.tokens.p50, forecast.tokens.p90, forecast.tokens.p99) == (41, 41, 41)
        assert forecast.tokens.mean == pytest.approx(40 + math.exp(mu) - 1, rel=1e-3)
