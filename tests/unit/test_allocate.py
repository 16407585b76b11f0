import numpy as np
import pytest
from forecasts import fixed_forecasts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roi_agents import (
    Budget,
    Controller,
    CostForecast,
    Forecast,
    InvalidValueError,
    Option,
    PriorPredictor,
    Spend,
    Step,
    allocate,
)
from roi_agents.allocate._mckp import lp_bound, solve
from roi_agents.allocate._milp import solve_milp


@st.composite
def instances(draw):
    n = draw(st.integers(1, 12))
    m = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 1, size=(n, m)) * rng.uniform(0.1, 3, size=(n, 1))
    costs = rng.lognormal(3, 1, size=(n, m))
    feasible = rng.uniform(size=(n, m)) < 0.85
    values[:, 0] = costs[:, 0] = 0
    feasible[:, 0] = True
    fraction = draw(st.floats(0.0, 1.2))
    capacity = float(costs.sum(axis=1).mean() * n / m * fraction)
    bins = draw(st.sampled_from([10, 50, 100, 1000]))
    return values, costs, feasible, capacity, bins


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.sampled_from(["dp", "greedy", "best"]))
def test_solvers_against_the_exact_milp(instance, method):
    values, costs, feasible, capacity, bins = instance
    n = values.shape[0]
    rows = np.arange(n)
    tolerance = 1 / bins  # as the controller asks: the resolution
    solution = solve(
        values, costs, feasible, capacity, bins=bins, method=method, tolerance=tolerance
    )
    # Never infeasible: one real option per step, within the budget at the true costs.
    assert feasible[rows, solution.choice].all()
    assert costs[rows, solution.choice].sum() <= capacity + 1e-9
    assert solution.value == pytest.approx(values[rows, solution.choice].sum())
    _, optimum = solve_milp(values, costs, feasible, [capacity])
    assert solution.value <= optimum + 1e-9
    # The LP bound holds.
    assert solution.bound >= optimum - 1e-9
    certified = solution.bound - solution.value <= tolerance * solution.bound + 1e-12
    if method == "dp" or (method == "best" and not certified):
        # The documented discretisation bound: OPT(B - n * delta) <= DP value.
        delta = capacity / bins
        _, shrunk = solve_milp(values, costs, feasible, [max(capacity - n * delta, 0.0)])
        assert solution.value >= shrunk - 1e-9


def test_dp_falls_back_when_the_reduced_problem_has_no_rounded_solution():
    # Reduction leaves steps that may not skip; at 4 budget units their rounded-up costs no
    # longer fit together, so the DP solves the whole instance instead.
    values = np.array(
        [[0, 0.25, 0.04], [0, 0, 0.61], [0, 0.94, 0.97], [0, 0.21, 0.46]], dtype=float
    )
    costs = np.array([[0, 6.5, 10], [0, 2, 1.3], [0, 1.2, 6.5], [0, 8.9, 8.2]], dtype=float)
    feasible = np.ones_like(values, dtype=bool)
    solution = solve(values, costs, feasible, 17.2, bins=4, method="dp", tolerance=0.0)
    rows = np.arange(4)
    assert costs[rows, solution.choice].sum() <= 17.2
    _, shrunk = solve_milp(values, costs, feasible, [17.2 - 4 * 17.2 / 4])
    _, optimum = solve_milp(values, costs, feasible, [17.2])
    assert shrunk - 1e-9 <= solution.value <= optimum + 1e-9
    assert solution.value == pytest.approx(optimum)  # polish reaches it here


def test_lp_bound_is_tight_without_a_fractional_item():
    values = np.array([[0.0, 1.0], [0.0, 2.0]])
    costs = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert lp_bound(values, costs, np.ones_like(values, bool), 2.0) == pytest.approx(3.0)
    assert lp_bound(values, costs, np.ones_like(values, bool), 1.5) == pytest.approx(2.5)


def _steps(n, names=("fast", "deep")):
    return [
        Step(id=f"s{i}", text=f"step {i}", options=[Option(name=o) for o in names])
        for i in range(n)
    ]


TABLE = {"fast": (0.6, 100, 150, 300), "deep": (0.9, 800, 1000, 2000)}


def test_plan_uses_the_chosen_quantile_and_caps_within_budget():
    steps = _steps(5)
    plan = allocate(steps, fixed_forecasts(steps, TABLE), Budget(tokens=2400))
    # At p90 deep costs 1000, fast 150: 1 deep + 4 fast (3.3 for 1600) beats 2 deep + 2 fast
    # (3.0 for 2300); 2 deep + 3 fast (2450) does not fit.
    chosen = [d.option for d in plan.decisions]
    assert chosen.count("deep") == 1
    assert chosen.count("fast") == 4
    assert plan.expected_cost("tokens") == pytest.approx(1600)
    assert plan.expected_value == pytest.approx(0.9 + 4 * 0.6)
    # Caps: each >= planned; a later one plus the planned costs after it fits the budget.
    planned = [d.expected_cost["tokens"] for d in plan.decisions]
    for i, decision in enumerate(plan.decisions):
        assert decision.cap.tokens >= int(planned[i])
        assert decision.cap.tokens + sum(planned[i + 1 :]) <= 2400 or i == 0
    # The step about to run (deep) keeps back 150 for each of the 4 fast steps after it.
    assert plan.decisions[0].option == "deep"
    assert plan.decisions[0].cap.tokens == 2400 - 4 * 150
    assert plan.decisions[0].reason.startswith(plan.decisions[0].option)


def test_the_step_about_to_run_keeps_back_the_cheapest_option_of_each_later_step():
    # s0 weighs double, so it is the one of the two deep steps that runs first.
    steps = _steps(5)
    steps[0] = steps[0].model_copy(update={"weight": 2.0})
    table = {"fast": (0.6, 100, 150, 300), "deep": (0.9, 800, 1000, 3000)}
    plan = allocate(steps, fixed_forecasts(steps, table), Budget(tokens=2600))
    chosen = [d.option for d in plan.decisions]
    assert chosen[0] == "deep"
    assert sorted(chosen[1:]) == ["deep", "fast", "fast", "fast"]
    # Not 2600 (all that is left: the later steps could be left nothing to run) nor 1150 (the
    # later plan at its p90: 1000 + 3 * 150): 2600 less the cheapest option (fast, 150) of each
    # of the 4 later steps.
    assert plan.decisions[0].cap.tokens == 2600 - 4 * 150
    # A later decision keeps back the plan after it, as before.
    later = next(d for d in plan.decisions[1:] if d.option == "deep")
    after = plan.decisions[plan.decisions.index(later) + 1 :]
    assert later.cap.tokens == min(3000, 2600 - sum(d.expected_cost["tokens"] for d in after))


def test_p50_quantile_plans_more_steps_than_p99():
    steps = _steps(6)
    fc = fixed_forecasts(steps, TABLE)
    p50 = allocate(steps, fc, Budget(tokens=900), quantile="p50")
    p99 = allocate(steps, fc, Budget(tokens=900), quantile="p99")
    assert sum(not d.skipped for d in p50.decisions) > sum(not d.skipped for d in p99.decisions)


def test_realised_spend_never_exceeds_budget_under_the_caps():
    """Receding horizon with adversarial costs: every step spends its whole cap."""
    rng = np.random.default_rng(7)
    for _ in range(50):
        budget = int(rng.integers(0, 5000))
        pending = _steps(int(rng.integers(1, 12)))
        remaining = Budget(tokens=budget)
        spent = 0
        controller = Controller(predictor=None)
        while pending:
            plan = controller.plan(pending, remaining, forecasts=fixed_forecasts(pending, TABLE))
            decision = plan.next
            assert decision is not None
            cost = 0 if decision.skipped else decision.cap.tokens
            spent += cost
            remaining = remaining.remaining_after(Spend(output_tokens=cost))
            pending = pending[1:]
        assert spent <= budget


def test_second_resource_by_lagrangian_relaxation_respects_both():
    steps = [
        Step(id=f"s{i}", options=[Option(name="tool", tool_calls=2), Option(name="think")])
        for i in range(6)
    ]
    table = {"tool": (0.95, 100, 100, 100), "think": (0.7, 300, 300, 300)}
    fc = fixed_forecasts(steps, table)
    unconstrained = allocate(steps, fc, Budget(tokens=3000))
    assert all(d.option == "tool" for d in unconstrained.decisions)
    plan = allocate(steps, fc, Budget(tokens=3000, tool_calls=5))
    used = sum(2 for d in plan.decisions if d.option == "tool")
    assert used <= 5
    assert plan.expected_cost("tool_calls") <= 5
    assert plan.expected_cost("tokens") <= 3000
    assert plan.multiplier > 0
    # 2 tool steps (4 calls) + 4 think steps (1200 tokens) is the optimum: 2*.95 + 4*.7.
    assert plan.expected_value == pytest.approx(2 * 0.95 + 4 * 0.7)
    assert plan.upper_bound >= plan.expected_value
    assert sum(d.cap.tool_calls for d in plan.decisions if d.option == "tool") <= 5


def test_usd_budget_derives_cost_from_prices():
    steps = [
        Step(
            id="a",
            input_tokens=1000,
            options=[
                Option(name="big", input_price=10, output_price=30),
                Option(name="small", input_price=0.5, output_price=0.5),
            ],
        )
    ]
    fc = fixed_forecasts(steps, {"big": (0.9, 1500, 2000, 3000), "small": (0.6, 1500, 2000, 3000)})
    # big at p90: 1000 in * 10/M + 1000 out * 30/M = 0.04 USD; small: 0.001.
    plan = allocate(steps, fc, Budget(usd=0.03))
    assert plan.next.option == "small"
    assert plan.next.expected_cost["usd"] == pytest.approx(0.001)
    assert allocate(steps, fc, Budget(usd=0.05)).next.option == "big"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"resolution": 0}, "resolution"),
        ({"remaining": Budget()}, "remaining"),
        ({"risk": "RUN"}, "risk"),
        ({"risk": None}, "risk"),
        ({"quantile": "p95"}, "quantile"),
        ({"solver": "milp"}, "solver"),
        ({"resource": "dollars"}, "resource"),
    ],
)
def test_bad_arguments_are_named(kwargs, field):
    steps = _steps(2)
    args = {"remaining": Budget(tokens=100), **kwargs}
    remaining = args.pop("remaining")
    with pytest.raises(InvalidValueError) as info:
        allocate(steps, fixed_forecasts(steps, TABLE), remaining, **args)
    assert info.value.field == field
    # The controller names them when it is built, before any planning.
    if field != "remaining":
        with pytest.raises(InvalidValueError) as info:
            Controller(**args)
        assert info.value.field == field


def test_a_policy_path_is_not_a_policy():
    with pytest.raises(InvalidValueError, match=r"Policy\.load"):
        Controller(policy="policy.json")  # type: ignore[arg-type]


def test_forecast_errors_are_named():
    steps = _steps(2)
    fc = fixed_forecasts(steps, TABLE)
    bad_option = fc[0].model_copy(update={"option": "nope"})
    with pytest.raises(InvalidValueError, match="nope"):
        allocate(steps, [*fc, bad_option], Budget(tokens=100))
    with pytest.raises(InvalidValueError, match="no forecast"):
        allocate(steps, fc[1:], Budget(tokens=100))
    with pytest.raises(InvalidValueError, match="duplicate step"):
        allocate([*steps, steps[0]], fc, Budget(tokens=100))
    with pytest.raises(InvalidValueError, match="predictor"):
        Controller().plan(steps, Budget(tokens=100))


def test_zero_budget_skips_everything():
    steps = _steps(3)
    plan = allocate(steps, fixed_forecasts(steps, TABLE), Budget(tokens=0))
    assert all(d.skipped for d in plan.decisions)
    assert plan.decisions[0].reason == "skip: no option fits in 0 tokens left"
    assert plan.decisions[0].cap.tokens == 0


async def test_async_plan_matches_sync():
    steps = _steps(4)
    controller = Controller(predictor=PriorPredictor())
    sync = controller.plan(steps, Budget(tokens=3000))
    asynchronous = await controller.aplan(steps, Budget(tokens=3000))
    assert sync == asynchronous


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 10), st.floats(0.05, 1.0), st.floats(0.0, 1.0))
def test_two_resources_against_the_exact_milp(seed, n, token_share, call_share):
    rng = np.random.default_rng(seed)
    options = (Option(name="a"), Option(name="b", tool_calls=1), Option(name="c", tool_calls=3))
    steps = [Step(id=f"s{i}", weight=float(rng.uniform(0.2, 2)), options=options) for i in range(n)]
    forecasts = []
    for step in steps:
        for option in options:
            c = float(rng.lognormal(4, 0.7))
            forecasts.append(
                Forecast(
                    step_id=step.id,
                    option=option.name,
                    p_success=float(rng.uniform()),
                    tokens=CostForecast(mean=c, p50=c, p90=c, p99=c),
                )
            )
    tokens = int(token_share * sum(f.tokens.p90 for f in forecasts) / 3) + 1
    calls = int(call_share * 4 * n / 3)
    plan = allocate(steps, forecasts, Budget(tokens=tokens, tool_calls=calls), resolution=0.001)
    assert plan.expected_cost("tokens") <= tokens + 1e-6
    assert plan.expected_cost("tool_calls") <= calls
    m = len(options) + 1
    values, costs, calls_used = np.zeros((n, m)), np.zeros((n, m)), np.zeros((n, m))
    for k, f in enumerate(forecasts):
        i, j = divmod(k, len(options))
        values[i, j + 1] = steps[i].weight * f.p_success
        costs[i, j + 1] = f.tokens.p90
        calls_used[i, j + 1] = options[j].tool_calls
    _, optimum = solve_milp(values, costs, np.ones((n, m), bool), [tokens, calls], [calls_used])
    assert plan.expected_value <= optimum + 1e-9
    assert plan.upper_bound >= optimum - 1e-6


def test_second_resource_stays_feasible_when_no_finite_multiplier_prices_it():
    steps = [
        Step(
            id=f"s{i}",
            weight=1e15,
            options=[Option(name="tool", tool_calls=1), Option(name="plain")],
        )
        for i in range(3)
    ]
    fc = fixed_forecasts(steps, {"tool": (0.9, 10, 10, 10), "plain": (0.5, 10, 10, 10)})
    plan = allocate(steps, fc, Budget(tokens=100, tool_calls=1))
    assert plan.expected_cost("tool_calls") <= 1
    assert [d.option for d in plan.decisions].count("tool") == 1


def _run_total(plan, forecasts):
    """What ``risk="run"`` budgets a plan at: sum of means + root of summed squared margins."""
    by = {(f.step_id, f.option): f.tokens for f in forecasts}
    chosen = [by[d.step_id, d.option] for d in plan.decisions if not d.skipped]
    return sum(c.mean for c in chosen) + np.sqrt(sum((c.p90 - c.mean) ** 2 for c in chosen))


def test_run_risk_budgets_the_total_not_each_step():
    steps = _steps(10)
    table = {"fast": (0.6, 100, 150, 300), "deep": (0.9, 800, 1000, 2000)}
    forecasts = fixed_forecasts(steps, table)
    budget = Budget(tokens=5000)
    per_step = allocate(steps, forecasts, budget)
    run = allocate(steps, forecasts, budget, risk="run")
    # Each step at its p90: 4 deep (4000) + 6 fast (900) = 4900. The total at its p90: 5 deep
    # cost 5 * 800 + 5 * 100 + sqrt(5 * 200^2 + 5 * 50^2) = 4961, which fits.
    assert [d.option for d in per_step.decisions].count("deep") == 4
    assert [d.option for d in run.decisions].count("deep") == 5
    assert run.expected_value > per_step.expected_value
    assert _run_total(run, forecasts) <= 5000
    # The total is shared out as the planned costs, none above its option's p90.
    assert run.expected_cost("tokens") == pytest.approx(_run_total(run, forecasts))
    for decision in run.decisions:
        assert decision.expected_cost["tokens"] <= table[decision.option][2] + 1e-9
        assert decision.cap.tokens <= 5000


def test_run_risk_at_the_mean_or_for_one_step_is_the_per_step_plan():
    steps = _steps(6)
    forecasts = fixed_forecasts(steps, TABLE)
    for quantile in ("mean", "p90"):
        pending = steps if quantile == "mean" else steps[:1]
        fc = [f for f in forecasts if f.step_id in {s.id for s in pending}]
        a = allocate(pending, fc, Budget(tokens=1500), quantile=quantile)
        b = allocate(pending, fc, Budget(tokens=1500), quantile=quantile, risk="run")
        assert [d.option for d in a.decisions] == [d.option for d in b.decisions]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.floats(0.0, 1.5))
def test_run_risk_fits_beats_the_per_step_plan_and_is_below_the_exact_optimum(seed, n, share):
    import itertools

    rng = np.random.default_rng(seed)
    names = ("a", "b", "c")
    steps = _steps(n, names)
    forecasts = []
    for step in steps:
        for name in names:
            mean = float(rng.lognormal(5, 1))
            p90 = mean * float(rng.uniform(1.0, 3.0))
            cost = CostForecast(mean=mean, p50=mean, p90=p90, p99=2 * p90)
            p = float(rng.uniform(0, 1))
            forecasts.append(Forecast(step_id=step.id, option=name, p_success=p, tokens=cost))
    total = int(share * sum(f.tokens.p90 for f in forecasts) / len(names))
    budget = Budget(tokens=total)
    run = allocate(steps, forecasts, budget, risk="run", resolution=0.001)
    per_step = allocate(steps, forecasts, budget, resolution=0.001)
    assert _run_total(run, forecasts) <= total * (1 + 1e-9) + 1e-9
    assert run.expected_value >= per_step.expected_value - 1e-9
    # Every plan, by enumeration: none that fits the run's total is worth more than the optimum.
    by = {(f.step_id, f.option): f for f in forecasts}
    best = 0.0
    for combo in itertools.product((None, *names), repeat=n):
        chosen = [by[s.id, o] for s, o in zip(steps, combo, strict=True) if o is not None]
        need = sum(f.tokens.mean for f in chosen)
        need += np.sqrt(sum((f.tokens.p90 - f.tokens.mean) ** 2 for f in chosen))
        if need <= total:
            best = max(best, sum(f.p_success for f in chosen))
    assert run.expected_value <= best + 1e-9
    for decision in run.decisions:
        assert decision.cap.tokens <= total


def test_a_policy_sets_each_turns_quantile_and_risk_by_the_budget_per_step():
    from roi_agents.allocate import Policy, Setting

    policy = Policy(
        resource="tokens",
        settings=[
            Setting(per_step=100, quantile="p99", risk="run"),
            Setting(per_step=1000, quantile="p50", risk="step"),
        ],
    )
    controller = Controller(policy=policy)
    steps = _steps(4)
    forecasts = fixed_forecasts(steps, TABLE)
    tight = controller.plan(steps, Budget(tokens=4 * 150), forecasts=forecasts)
    loose = controller.plan(steps, Budget(tokens=4 * 2000), forecasts=forecasts)
    assert tight.quantile == "p99"
    assert loose.quantile == "p50"
    expected = allocate(steps, forecasts, Budget(tokens=600), quantile="p99", risk="run")
    assert [d.option for d in tight.decisions] == [d.option for d in expected.decisions]
    # A policy tuned on another resource than the controller solves is refused; a budget that
    # does not limit the policy's resource keeps the controller's own settings, and says so.
    usd = Policy(resource="usd", settings=[Setting(per_step=1.0, quantile="p99")])
    with pytest.raises(InvalidValueError, match="resource='usd'"):
        Controller(policy=usd)
    with pytest.warns(RuntimeWarning, match="does not limit usd"):
        plan = Controller(resource="usd", policy=usd).plan(
            steps, Budget(tokens=600), forecasts=forecasts
        )
    assert plan.quantile == "p90"


def test_run_risk_with_a_quantile_below_the_mean_budgets_that_option_at_its_quantile():
    # A heavy tail: the p90 (60) below the mean (100). Counted at its p90, as per step.
    steps = _steps(3, ("x", "y"))
    forecasts = [
        Forecast(
            step_id=s.id,
            option=name,
            p_success=p,
            tokens=CostForecast(mean=mean, p50=p50, p90=p90, p99=p99),
        )
        for s in steps
        for name, p, mean, p50, p90, p99 in (
            ("x", 0.5, 100, 40, 60, 400),
            ("y", 0.9, 150, 100, 300, 600),
        )
    ]
    for budget in (0, 200, 900):
        run = allocate(steps, forecasts, Budget(tokens=budget), risk="run")
        per_step = allocate(steps, forecasts, Budget(tokens=budget))
        assert run.expected_value >= per_step.expected_value - 1e-12
        assert run.expected_cost("tokens") <= budget + 1e-9
        for decision in run.decisions:
            assert 0 <= decision.cap.tokens <= budget


def test_a_policy_takes_any_positive_budget_per_step():
    from roi_agents.allocate import Policy, Setting

    tiny = Policy(
        resource="tokens",
        settings=[Setting(per_step=5e-324, risk="run"), Setting(per_step=1000.0)],
    )
    assert tiny.setting_for(600).per_step == 1000.0
    assert tiny.setting_for(1e-300).risk == "run"
    with pytest.raises(ValueError, match="per_step"):
        Setting(per_step=True)
