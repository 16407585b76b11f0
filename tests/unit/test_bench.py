import json
import math

import pytest

from roi_agents.bench.simulate import BenchConfig, list_prices, run_bench
from roi_agents.data import load_replay
from roi_agents.errors import DataError, InvalidValueError


@pytest.fixture(scope="module")
def gsm8k(shared_data):
    return load_replay(shared_data / "gsm8k.jsonl")


@pytest.fixture(scope="module")
def result(gsm8k):
    return run_bench(
        gsm8k, BenchConfig(budgets=(0.1, 0.5), episodes=8, steps=12, seed=3), data="gsm8k"
    )


def test_no_policy_overruns_and_the_oracle_is_the_ceiling(result):
    assert result.resource == "usd"
    assert result.cheapest == "mixtral-8x7b-instruct-v0.1"
    assert result.dearest == "gpt-4-1106-preview"
    for policies in result.budgets.values():
        assert set(policies) == {
            "fixed:gpt-4-1106-preview",
            "fixed:mixtral-8x7b-instruct-v0.1",
            "random-mix",
            "threshold",
            "best-single",
            "threshold-pairs",
            "router",
            "ours",
            "oracle",
        }
        oracle = policies["oracle"].value
        for name, r in policies.items():
            assert r.overruns == 0, name
            assert r.spend <= r.budget * (1 + 1e-9), name
            assert r.value <= oracle + 1e-9, name
        assert policies["oracle"].pct_oracle == pytest.approx(100)
        assert policies["oracle"].gap_closed == pytest.approx(1.0)
        baseline = max(
            r.value for n, r in policies.items() if n.startswith("fixed:") or n == "random-mix"
        )
        ours = policies["ours"]
        assert ours.gap_closed == pytest.approx((ours.value - baseline) / (oracle - baseline))
        # Standard errors over the 8 episodes; the best baseline's paired differences are 0.
        best = next(r for n, r in policies.items() if r.value == baseline and n != "ours")
        assert best.gap_closed_se == 0.0
        assert 0 <= ours.gap_closed_se < 1
        assert 0 < ours.value_se < ours.value
        assert policies["fixed:mixtral-8x7b-instruct-v0.1"].pgr == pytest.approx(0, abs=1e-9) or (
            policies["fixed:mixtral-8x7b-instruct-v0.1"].truncated > 0
        )
        # The baselines tuned on the training part say what they chose; best-single plays it.
        single = policies["best-single"]
        assert single.value == policies[f"fixed:{single.choice}"].value
        assert " / " in policies["threshold-pairs"].choice
        # Against the best of every baseline, the tuned ones included.
        best_all = max(r.value for n, r in policies.items() if n not in ("ours", "oracle"))
        assert best_all >= baseline
        assert ours.gap_closed_all == pytest.approx((ours.value - best_all) / (oracle - best_all))
        assert ours.gap_closed_all <= ours.gap_closed + 1e-12
        assert ours.value_se_queries > 0
        low = result.unlimited["fixed:mixtral-8x7b-instruct-v0.1"]
        top = max(result.unlimited.values())
        assert ours.pgr_best == pytest.approx((ours.value - low) / (top - low))
    assert result.distinct_test_queries <= 8 * 12
    assert any(p["ours"].gap_closed_se > 0 for p in result.budgets.values())


def test_json_shape(result):
    payload = json.loads(json.dumps(result.to_json()))
    assert {"data", "episodes", "steps", "seed", "budgets", "distinct_test_queries"} <= (
        payload.keys()
    )
    assert (payload["episodes"], payload["steps"], payload["seed"]) == (8, 12, 3)
    assert payload["list_prices"]["gpt-4-1106-preview"] == pytest.approx([10.0, 30.0])
    assert [b["fraction"] for b in payload["budgets"]] == [0.1, 0.5]
    ours = payload["budgets"][0]["policies"]["ours"]
    for key in (
        "value",
        "spend",
        "budget",
        "overruns",
        "pct_oracle",
        "pgr",
        "gap_closed",
        "gap_closed_se",
        "gap_closed_all",
        "gap_closed_all_se",
        "gap_closed_all_se_queries",
        "value_se_queries",
        "pgr_best",
        "value_se",
        "latency_ms_p50",
    ):
        assert key in ours
    assert ours["overruns"] == 0


def test_seeded_runs_repeat(gsm8k):
    config = BenchConfig(budgets=(0.25,), episodes=4, steps=10, seed=11)
    a, b = run_bench(gsm8k, config), run_bench(gsm8k, config)
    for name, r in a.budgets[0.25].items():
        other = b.budgets[0.25][name]
        assert (r.value, r.spend, r.overruns) == (other.value, other.spend, other.overruns)
    c = run_bench(gsm8k, BenchConfig(budgets=(0.25,), episodes=4, steps=10, seed=12))
    assert c.budgets[0.25]["oracle"].value != a.budgets[0.25]["oracle"].value or (
        c.budgets[0.25]["ours"].spend != a.budgets[0.25]["ours"].spend
    )


def test_many_options_graded_scores_and_token_budgets(tmp_path):
    path = tmp_path / "effort.jsonl"
    rows = []
    for q in range(60):
        for level, (tokens, score) in enumerate([(50, 0.2), (200, 0.6), (800, 0.9)]):
            if q % 7 == 0 and level == 2:
                continue  # some queries lack the deep option
            rows.append(
                {
                    "query_id": f"q{q}",
                    "dataset": f"d{q % 3}",
                    "option": f"effort-{level}",
                    "input_tokens": 20,
                    "output_tokens": tokens + (q * 13) % 90,
                    "score": score if q % 2 else score / 2,
                }
            )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = run_bench(load_replay(path), BenchConfig(budgets=(0.3,), episodes=5, steps=10))
    assert result.resource == "tokens"
    policies = result.budgets[0.3]
    assert len([n for n in policies if n.startswith("fixed:")]) == 3
    assert all(r.overruns == 0 for r in policies.values())
    assert policies["ours"].value <= policies["oracle"].value + 1e-9
    assert not math.isnan(policies["ours"].pgr)


def test_option_names_show_as_they_are_and_zero_costs_budget_tokens(tmp_path):
    from rich.console import Console

    from roi_agents.bench.report import print_result

    path = tmp_path / "effort.jsonl"
    rows = [
        {"query_id": f"q{q}", "option": option, "input_tokens": 20, "cost_usd": 0.0}
        | {"output_tokens": tokens + q % 7, "score": float((q + tokens) % 3 > 0)}
        for q in range(40)
        for option, tokens in (("o3[high]", 400), ("o3[low]", 50), ("x[/]", 100))
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # Every cost_usd is 0 (self-hosted models): a USD budget would be 0, so tokens it is.
    result = run_bench(load_replay(path), BenchConfig(budgets=(0.3,), episodes=2, steps=5))
    assert result.resource == "tokens"
    assert result.budgets[0.3]["oracle"].value > 0
    console = Console(record=True, width=400)
    print_result(result, console)
    shown = console.export_text()
    for name in ("fixed:o3[high]", "fixed:o3[low]", "fixed:x[/]"):
        assert name in shown
    (oracle,) = [line for line in shown.splitlines() if line.startswith("│ oracle")]
    assert "1.00 ±" not in oracle  # its gap closed is 1 by definition
    with pytest.raises(DataError, match="every recorded cost in usd is 0"):
        run_bench(
            load_replay(path), BenchConfig(budgets=(0.3,), episodes=2, steps=5, resource="usd")
        )


def test_bad_config_is_named(gsm8k):
    with pytest.raises(InvalidValueError, match="episodes"):
        run_bench(gsm8k, BenchConfig(episodes=0))
    with pytest.raises(InvalidValueError, match="budgets"):
        run_bench(gsm8k, BenchConfig(budgets=(0.0,)))
    with pytest.raises(InvalidValueError, match="twice"):
        run_bench(gsm8k, BenchConfig(budgets=(0.1, 0.1)))
    with pytest.raises(InvalidValueError, match="seed"):
        run_bench(gsm8k, BenchConfig(seed=-1))
    with pytest.raises(InvalidValueError, match="steps"):
        run_bench(gsm8k[:20], BenchConfig(steps=30))


def test_list_prices_are_recovered_only_where_costs_are_exact(gsm8k, tmp_path):
    prices = list_prices(gsm8k)
    assert prices["gpt-4-1106-preview"] == pytest.approx((10.0, 30.0), rel=1e-9)
    assert prices["mixtral-8x7b-instruct-v0.1"] == pytest.approx((0.6, 0.6), rel=1e-9)
    rows = [
        {"query_id": f"q{i}", "option": option, "input_tokens": 100 + i, "output_tokens": 10 * i}
        | {"cost_usd": cost, "score": 1}
        for i in range(20)
        for option, cost in (
            ("exact", (2 * (100 + i) + 8 * 10 * i) / 1e6),
            ("discounted", (2 * (100 + i) + 8 * 10 * i) / 1e6 * (0.9 if i == 7 else 1.0)),
        )
    ]
    rows.append({"query_id": "q20", "option": "exact", "cost_usd": 1e-4, "score": 1})
    rows.append({"query_id": "q21", "option": "no-tokens", "cost_usd": 1e-4, "score": 0})
    path = tmp_path / "priced.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # One cost off its price (a discount) or one row without token counts: no list price.
    assert list_prices(load_replay(path)) == {}
    priced = list_prices(load_replay(path)[:20])
    assert priced.keys() == {"exact"}
    assert priced["exact"] == pytest.approx((2.0, 8.0), rel=1e-9)


def test_a_budget_met_to_the_last_cent_is_not_overrun(shared_data):
    # Many models, USD costs: spends that meet the budget exactly once rounded a hair past it
    # and the next decision was handed a negative budget.
    queries = load_replay(shared_data / "simpleqa.jsonl")
    result = run_bench(queries, BenchConfig(budgets=(0.25,), episodes=20, steps=30, seed=0))
    policies = result.budgets[0.25]
    assert all(r.overruns == 0 for r in policies.values())
    assert all(r.spend <= r.budget * (1 + 1e-9) for r in policies.values())


class _Flat:
    """A learned predictor sure of every option alike (p_success 0.95): it never upgrades."""

    def __init__(self, prior):
        self.prior = prior

    def predict(self, steps):
        return [
            f.model_copy(update={"p_success": 0.95, "source": "flat"})
            for f in self.prior.predict(steps)
        ]

    async def apredict(self, steps):
        return self.predict(steps)


def test_online_the_prior_learns_and_a_learned_predictor_is_guarded(gsm8k):
    from roi_agents.bench.simulate import fit_prior, prepare
    from roi_agents.predict import GuardedPredictor, PriorPredictor

    def flat(train):
        return _Flat(fit_prior(True)(train))

    config = BenchConfig(budgets=(0.25, 0.5), episodes=12, steps=15, seed=3)
    online = BenchConfig(budgets=(0.25, 0.5), episodes=12, steps=15, seed=3, online=True)
    guarded = prepare(gsm8k, online, predictor=flat).fit()
    assert isinstance(guarded, GuardedPredictor)
    assert isinstance(guarded.learned, _Flat)
    assert isinstance(prepare(gsm8k, online).fit(), PriorPredictor)  # a learner stays itself
    setup = prepare(gsm8k, online)
    assert setup.fit() is not setup.fit()  # fresh per budget
    blind = run_bench(gsm8k, config, predictor=flat)
    learning = run_bench(gsm8k, online, predictor=flat)
    assert learning.to_json()["online"] is True
    for fraction in online.budgets:
        ours, before = learning.budgets[fraction]["ours"], blind.budgets[fraction]["ours"]
        assert ours.overruns == 0
        # Blind, it takes the cheap model every time; guarded, the prior soon overrules the
        # cheap model's 0.95 (it solves 0.64 of GSM8K) and ours upgrades the steps it can pay.
        assert before.value == blind.budgets[fraction]["fixed:mixtral-8x7b-instruct-v0.1"].value
        assert ours.value > before.value
        # The other policies do not learn and replay exactly as before.
        for name in ("fixed:gpt-4-1106-preview", "random-mix", "threshold", "oracle"):
            assert learning.budgets[fraction][name].value == blind.budgets[fraction][name].value


def test_a_cap_of_what_rounding_leaves_is_a_skip_not_a_cut_off(gsm8k):
    from roi_agents.bench.simulate import _play

    episode = gsm8k[:3]
    option = next(iter(episode[0].outcomes))
    run = _play(episode, (), 1e-17, "usd", lambda steps, i, left: (option, left))
    assert (run.skipped, run.truncated, run.spend) == (3, 0, 0.0)


def test_the_query_bootstrap_weights_each_step_by_its_query():
    import numpy as np

    from roi_agents.bench.simulate import StepOutcome, _query_bootstrap, _Run

    def run(values):
        return _Run(steps=[StepOutcome("a", 1.0, 1.0, v, cut_off=False) for v in values])

    # Two episodes over queries 0, 1, 2: query 1 is drawn twice.
    runs = [run([1.0, 0.0]), run([1.0, 1.0])]
    where = np.array([[0, 1], [1, 2]])
    resample = np.array([[1, 1, 1], [0, 3, 0], [2, 0, 1]])
    # Earned per query: 1, 1, 1; per sample: (1+1+1)/2, (3*1)/2, (2*1 + 1)/2.
    assert _query_bootstrap(runs, where, resample).tolist() == [1.5, 1.5, 1.5]
    runs = [run([1.0, 0.0]), run([0.0, 1.0])]  # earned: query 0 -> 1, 1 -> 0, 2 -> 1
    assert _query_bootstrap(runs, where, resample).tolist() == [1.0, 0.0, 1.5]


def test_ours_plans_with_a_predictor_no_baseline_forecast_with(gsm8k):
    from roi_agents.bench.simulate import fit_prior
    from roi_agents.predict.composed import ComposedPredictor

    built = []

    def build(train):
        composed = ComposedPredictor(fit_prior(True)(train), fit_prior(True)(train))
        built.append(composed)
        return composed

    config = BenchConfig(budgets=(0.1, 0.5), episodes=2, steps=5, seed=1)
    run_bench(gsm8k, config, predictor=build)
    shared, *ours = built
    assert len(ours) == len(config.budgets)
    # The baselines forecast the training steps with the shared one; ours forecast only the
    # steps of its own episodes (2 x 5), so its running means are of those alone.
    assert max(w.steps for w in shared.weights()) > 100
    for composed in ours:
        assert 0 < max(w.steps for w in composed.weights()) <= 10
