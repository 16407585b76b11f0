"""GuardedPredictor: the prior overrules a learned predictor only where it scores worse."""

import numpy as np
import pytest
from forecasts import fixed_forecasts
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from roi_agents import Option, PriorPredictor, Spend, Step
from roi_agents.errors import InvalidValueError
from roi_agents.predict import GuardedPredictor, Learner, Predictor
from roi_agents.telemetry import names

OPTIONS = (Option(name="fast"), Option(name="deep"))


class Fixed:
    """A learned predictor that never learns: the same forecast per (group, option) always."""

    def __init__(self, table_by_group):
        self.table_by_group = table_by_group

    def predict(self, steps):
        out = []
        for step in steps:
            out += fixed_forecasts([step], self.table_by_group[step.group])
        return [f.model_copy(update={"source": "learned"}) for f in out]

    async def apredict(self, steps):
        return self.predict(steps)


def _step(group, k=0):
    return Step(id=f"{group}-{k}", text="a question", group=group, options=OPTIONS)


def _feed(guard, group, option, n, p, tokens, seed=0):
    """``n`` outcomes of ``option`` on ``group``: success with probability ``p``."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        spend = Spend(output_tokens=int(tokens * rng.lognormal(0, 0.3)))
        guard.observe(_step(group, k), option, spend, success=float(rng.random() < p))


def _trust(guard, option="deep"):
    return {(t.group, t.part): t for t in guard.trust() if t.option == option}


RIGHT = {"fast": (0.3, 100, 150, 200), "deep": (0.9, 400, 600, 800)}


def test_a_learned_predictor_that_scores_better_is_served_as_it_is():
    guard = GuardedPredictor(Fixed({"math": RIGHT}))
    assert isinstance(guard, Predictor)
    assert isinstance(guard, Learner)
    _feed(guard, "math", "deep", 120, p=0.9, tokens=400)
    trust = _trust(guard)
    assert set(trust) == {(None, "cost"), (None, "success"), ("math", "cost"), ("math", "success")}
    assert all(t.outcomes == 120 and t.trusted for t in trust.values())
    # The learned forecast was better than the prior's, which learns as it goes.
    assert trust["math", "success"].excess < 0
    forecasts = guard.predict([_step("math")])
    assert [f.source for f in forecasts] == ["learned", "learned"]
    assert forecasts[1].p_success == 0.9


def test_a_wrong_part_is_overruled_by_the_prior_and_only_that_part():
    # Right about cost, badly overconfident about success.
    wrong_p = {"fast": RIGHT["fast"], "deep": (0.99, 400, 600, 800)}
    guard = GuardedPredictor(Fixed({"math": wrong_p, "algebra": wrong_p}), min_outcomes=30)
    _feed(guard, "math", "deep", 29, p=0.2, tokens=400)
    assert guard.predict([_step("math")])[1].p_success == 0.99  # not enough outcomes yet
    _feed(guard, "math", "deep", 30, p=0.2, tokens=400, seed=1)
    step = _step("math")
    served = guard.predict([step])[1]
    prior = guard.prior.predict([step])[1]
    assert served.p_success == prior.p_success < 0.4
    assert served.tokens == Fixed({"math": wrong_p}).predict([step])[1].tokens
    assert served.source == "prior (success) + learned (cost)"
    # The option it was never told about takes its group's verdict: that group's steps are
    # misjudged. In a group never seen, the option that ran takes its verdict over all groups,
    # and the other has none: the learned forecast stands.
    assert guard.predict([step])[0].source == "prior (success) + learned (cost)"
    assert {(t.option, t.group, t.part): t.trusted for t in guard.trust()}[
        None, "math", "success"
    ] is False
    fast, deep = guard.predict([_step("algebra")])
    assert (fast.source, deep.source) == ("learned", "prior (success) + learned (cost)")


def test_costs_far_off_are_overruled():
    short = {"fast": RIGHT["fast"], "deep": (0.9, 5, 6, 8)}  # worked answers priced as one token
    guard = GuardedPredictor(Fixed({"math": short}))
    _feed(guard, "math", "deep", 40, p=0.9, tokens=400)
    served = guard.predict([_step("math")])[1]
    assert served.source == "learned (success) + prior (cost)"
    assert served.tokens.p90 > 300
    trust = _trust(guard)
    assert trust["math", "cost"].excess > 1
    assert not trust["math", "cost"].trusted
    assert trust["math", "success"].trusted


def test_a_cut_off_step_scores_cost_as_a_lower_bound_and_not_success():
    short = {"fast": RIGHT["fast"], "deep": (0.2, 5, 6, 8)}  # and far too doubtful of success
    prior = PriorPredictor()
    guard = GuardedPredictor(Fixed({"math": short}), prior)
    # Every step stops at a cap of 40 tokens: the learned quantiles all fall short of it.
    for k in range(40):
        guard.observe(_step("math", k), "deep", Spend(output_tokens=40), 0.0, truncated=True)
    trust = _trust(guard)
    assert set(trust) == {(None, "cost"), ("math", "cost")}  # success never scored
    assert not trust["math", "cost"].trusted
    # log(41 / 6) at 0.5 + 0.9 + 0.99 for each quantile short of the spend, less nothing for the
    # prior's (its default of 512 tokens lies above the spend).
    assert trust["math", "cost"].excess == pytest.approx(
        0.5 * np.log(41 / 6) + 0.9 * np.log(41 / 7) + 0.99 * np.log(41 / 9)
    )
    untaught = PriorPredictor().predict([_step("math")])[1].p_success
    assert prior.predict([_step("math")])[1].p_success == untaught  # the prior learned nothing


def test_a_group_found_wrong_is_overruled_for_every_option_whatever_their_own_verdicts():
    # Both options misjudge the group's success; the plan ran "fast" most, which found it out
    # for the group. "deep"'s own outcomes, too few to show it alone, do not bring it back:
    # a plan that picks an option only where its forecast happens to be near the truth would
    # never find its other forecasts out.
    wrong = {"fast": (0.9, 100, 150, 200), "deep": (0.6, 400, 600, 800)}
    guard = GuardedPredictor(Fixed({"math": wrong}))
    _feed(guard, "math", "fast", 100, p=0.3, tokens=100)
    _feed(guard, "math", "deep", 35, p=0.9, tokens=400)
    deep = _trust(guard)["math", "success"]
    assert deep.outcomes == 35
    assert deep.excess > 0
    assert deep.trusted  # its own verdict: not yet enough evidence
    assert not _trust(guard, None)["math", "success"].trusted
    assert guard.predict([_step("math")])[1].source == "prior (success) + learned (cost)"


def test_groups_are_judged_apart_and_a_new_group_borrows_its_option_verdict():
    table = {"mmlu": RIGHT, "gsm8k": {"fast": RIGHT["fast"], "deep": (0.2, 5, 6, 8)}}
    guard = GuardedPredictor(Fixed({**table, "new": table["gsm8k"]}))
    _feed(guard, "mmlu", "deep", 40, p=0.9, tokens=400)
    _feed(guard, "gsm8k", "deep", 100, p=0.9, tokens=400)
    trust = _trust(guard)
    assert trust["mmlu", "success"].trusted
    assert trust["mmlu", "cost"].trusted
    assert not trust["gsm8k", "success"].trusted
    assert not trust["gsm8k", "cost"].trusted
    # 140 outcomes pooled, most of them gsm8k's: a group with too few outcomes of its own
    # gets the prior's forecasts.
    assert not trust[None, "success"].trusted
    assert not trust[None, "cost"].trusted
    assert guard.predict([_step("mmlu")])[1].source == "learned"
    assert guard.predict([_step("new")])[1].source == "prior"


def test_trust_comes_back_when_the_recent_outcomes_agree_with_the_learned_predictor():
    guard = GuardedPredictor(Fixed({"math": RIGHT}), window=60)
    _feed(guard, "math", "deep", 60, p=0.1, tokens=400)  # a bad spell
    assert not _trust(guard)["math", "success"].trusted
    _feed(guard, "math", "deep", 30, p=0.9, tokens=400, seed=2)  # the spell has passed
    back = _trust(guard)["math", "success"]
    assert not back.trusted  # not yet: the window still holds the bad spell
    assert back.evidence == 1.0  # nor does it bet on the learned while the mean is against it
    _feed(guard, "math", "deep", 120, p=0.9, tokens=400, seed=3)
    assert _trust(guard)["math", "success"].trusted


def test_a_learned_predictor_as_good_as_the_prior_is_never_overruled():
    # The learned forecasts are the truth; the prior learns it within a few dozen outcomes, and
    # from then on the two tie, up to noise. A z-test of the last 200 outcomes repeated after
    # each one overruled it in each of four seeded runs (after 249-1,483 outcomes); the
    # e-process's chance of ever doing so is at most alpha.
    guard = GuardedPredictor(Fixed({"math": {"fast": RIGHT["fast"], "deep": (0.7, 400, 600, 800)}}))
    rng = np.random.default_rng(4)
    for k in range(3000):
        tokens = int(np.exp(rng.normal(np.log(400), 0.3)))
        guard.observe(
            _step("math", k), "deep", Spend(output_tokens=tokens), float(rng.random() < 0.7)
        )
    trust = _trust(guard)
    assert all(t.trusted for t in trust.values())
    assert all(t.evidence < 10 for t in trust.values())
    assert abs(trust["math", "success"].excess) < 0.01  # a tie by now


@pytest.mark.parametrize("seed", range(5))
def test_the_cost_excess_stays_within_the_range_the_forecasts_fix(seed):
    from roi_agents.predict.guard import _cost_loss, _cost_range

    rng = np.random.default_rng(seed)
    learned, prior = (
        fixed_forecasts(
            [_step("math")],
            {"fast": RIGHT["fast"], "deep": (0.5, *np.sort(rng.lognormal(5, 1.5, 3)))},
        )[1]
        for _ in range(2)
    )
    low, high = _cost_range(learned, prior, ["tokens"])
    assert low < 0 < high
    for tokens in np.concatenate([rng.lognormal(5, 2, 200), [0, 1e9]]):
        for cut_off in (False, True):
            spend = Spend(output_tokens=int(tokens))
            excess = _cost_loss(learned, spend, ["tokens"], cut_off) - _cost_loss(
                prior, spend, ["tokens"], cut_off
            )
            assert low - 1e-9 <= excess <= high + 1e-9


def test_each_change_of_trust_is_an_event_on_the_current_span():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    guard = GuardedPredictor(Fixed({"math": {"fast": RIGHT["fast"], "deep": (0.99, 5, 6, 8)}}))
    with provider.get_tracer("test").start_as_current_span("run"):
        _feed(guard, "math", "deep", 40, p=0.2, tokens=400)
    (span,) = exporter.get_finished_spans()
    events = [dict(e.attributes) for e in span.events if e.name == names.EVENT_GUARD]
    # Overruled once per part: the option in the group, the group, the option.
    assert sorted((e[names.OPTION], e[names.STEP_GROUP], e[names.EVENT_PART]) for e in events) == [
        ("", "math", "cost"),
        ("", "math", "success"),
        ("deep", "", "cost"),
        ("deep", "", "success"),
        ("deep", "math", "cost"),
        ("deep", "math", "success"),
    ]
    assert all(e[names.EVENT_TRUSTED] is False for e in events)
    provider.shutdown()


async def test_the_async_path_serves_the_same_forecasts():
    guard = GuardedPredictor(Fixed({"math": {"fast": RIGHT["fast"], "deep": (0.99, 5, 6, 8)}}))
    _feed(guard, "math", "deep", 40, p=0.2, tokens=400)
    steps = [_step("math", k) for k in range(3)]
    assert await guard.apredict(steps) == guard.predict(steps)


def test_the_prior_learns_every_outcome_after_it_is_scored():
    prior = PriorPredictor()
    guard = GuardedPredictor(Fixed({"math": RIGHT}), prior)
    _feed(guard, "math", "fast", 5, p=1.0, tokens=100)
    assert prior.predict([_step("math")])[0].p_success > 0.6  # it saw five successes
    guard.observe(_step("math"), "skip", Spend(), success=0.0)  # a skip teaches nothing
    assert len(guard.trust()) == 6  # both parts of (fast, math), (every option, math), fast


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"min_outcomes": 1}, "min_outcomes"),
        ({"min_outcomes": 50, "window": 40}, "window"),
        ({"alpha": float("nan")}, "alpha"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
    ],
)
def test_bad_settings_are_named(kwargs, name):
    with pytest.raises(InvalidValueError) as raised:
        GuardedPredictor(Fixed({}), **kwargs)
    assert raised.value.field == name


def test_bad_outcomes_are_refused():
    guard = GuardedPredictor(Fixed({"math": RIGHT}))
    with pytest.raises(InvalidValueError):
        guard.observe(_step("math"), "deep", Spend(), success=1.5)
    with pytest.raises(InvalidValueError):
        guard.observe(_step("math"), "nope", Spend(), success=1.0)
    assert guard.trust() == []
