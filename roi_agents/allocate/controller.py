"""The budget controller: turn forecasts and what is left into one capped decision per step.

`allocate` solves one planning turn; `Controller` holds the settings and the predictor and is
called again after every step with what is really left (receding horizon).

The problem (OS-MCKP): pick one option per pending step, ``skip`` included, to maximise
``sum(weight * p_success)`` subject to the planned costs fitting the remaining budget. Costs are
random, so each option is budgeted at a quantile of its forecast (the chance constraint, p90 by
default). The main resource is solved exactly (`solve_dp`) or by the LP-relaxation greedy; any
other limited resource is priced in by a Lagrange multiplier, found by bisection, on its share of
its budget, and the returned plan fits every limited resource.

Each decision gets a hard cap: the option's p99 cost, never less than what the plan budgeted for
it and never more than what is left. For the later decisions of a plan, "what is left" is the
budget minus what the plan budgets for the steps after them. The step about to run keeps back
less: only the cheapest option of each later step the plan runs. The steps after it are planned
again from what is really left once it has run, where they can take a cheaper option, so
squeezing its cap to keep their whole plan would cut it off (a sure loss of its value), while
letting it spend all that is left could leave them nothing to run at all. (Replay bench, GSM8K,
a learned checkpoint: against keeping the whole plan, steps cut off per episode at budget 0.5
fell from 0.40 to 0.01; against keeping nothing, steps skipped at 0.1 fell from 0.20 to 0.00,
with more value at every budget.) So the realised spend of a run that re-plans after each step
and respects each next decision's cap can never exceed its budget, whatever the forecasts said.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Literal, NoReturn, cast, get_args

import numpy as np

from roi_agents.allocate._mckp import (
    BoolArray,
    FloatArray,
    IntArray,
    Method,
    Solution,
    polish,
    solve,
)
from roi_agents.allocate.policy import Policy
from roi_agents.errors import InvalidValueError
from roi_agents.predict.base import Predictor
from roi_agents.types import (
    SKIP,
    Budget,
    CostForecast,
    Decision,
    Forecast,
    Option,
    Plan,
    Quantile,
    Resource,
    Risk,
    Step,
)

__all__ = ["Controller", "SolverName", "allocate"]

SolverName = Literal["auto", "dp", "greedy"]

# Above this many DP cells (steps x options x bins) "auto" switches to the greedy.
_DP_CELLS = 4_000_000
_BISECTION_STEPS = 40
_MIN_RESOLUTION = 1e-6
# Tangent points `_run_risk` solves at.
_RUN_ROUNDS = 3
_SKIP_CAP = {"tokens": 0, "usd": 0.0, "tool_calls": 0}


def allocate(
    pending: Sequence[Step],
    forecasts: Sequence[Forecast],
    remaining: Budget,
    *,
    resource: Resource = "tokens",
    quantile: Quantile = "p90",
    resolution: float = 0.01,
    solver: SolverName = "auto",
    risk: Risk = "step",
) -> Plan:
    """Allocate ``remaining`` over ``pending`` steps, one option (or skip) each.

    Args:
        pending: the steps still to run, in order.
        forecasts: one per (step, option) to consider; ``skip`` needs none.
        remaining: what is left. Unlimited resources are not planned for.
        resource: the resource to solve for exactly when the budget limits it; otherwise the
            first limited one. Other limited resources are priced in by a multiplier.
        quantile: cost quantile each option is budgeted at.
        resolution: DP budget unit as a fraction of the remaining budget (0.01 = 1%), at
            least 1e-6; also the precision ``"auto"`` asks of the plan's value.
        solver: ``"dp"``, ``"greedy"``, or ``"auto"``: the greedy when its certified gap
            (LP bound minus its value) is within ``resolution`` of the bound or the instance is
            very large, else the better of the greedy and the DP.
        risk: ``"step"`` budgets each option at its own ``quantile``; ``"run"`` budgets the
            plan's total at it: the sum of the means plus the root of the sum of each option's
            squared margin (quantile less mean), as for a sum of independent costs, which is
            never more than the sum of the quantiles (an option whose quantile is below its
            mean counts at its quantile; see `_run_risk`).

    Returns:
        The plan, its decisions in step order.

    Raises:
        InvalidValueError: on a forecast for an unknown step or option, a missing forecast,
            duplicate step ids, a resolution outside [1e-6, 1], an unknown resource, quantile,
            solver or risk, or a budget that limits nothing.

    Example:
        >>> from roi_agents.types import Budget, CostForecast, Forecast, Option, Step
        >>> step = Step(id="a", options=[Option(name="fast")])
        >>> cost = CostForecast(mean=90, p50=80, p90=120, p99=200)
        >>> fc = Forecast(step_id="a", option="fast", p_success=0.8, tokens=cost)
        >>> allocate([step], [fc], Budget(tokens=1000)).next.option
        'fast'
    """
    _check_settings(resolution, resource, quantile, solver, risk)
    limited = remaining.limited()
    if not limited:
        raise InvalidValueError("remaining", "the budget limits no resource")
    primary = resource if resource in limited else limited[0]
    secondary = [r for r in limited if r != primary]
    table = _Table.build(pending, forecasts, limited, quantile)
    capacity = float(remaining.get(primary) or 0.0)
    bins = max(1, round(1 / resolution))
    if solver == "auto":
        method: Method = "best" if table.values.size * bins <= _DP_CELLS else "greedy"
    else:
        method = solver

    def solve_with(costs: FloatArray, room: float) -> Callable[[FloatArray], Solution]:
        def solve_for(values: FloatArray) -> Solution:
            return solve(
                values, costs, table.feasible, room, bins=bins, method=method, tolerance=resolution
            )

        return solve_for

    solution, multiplier, bound = _price_in(
        table, remaining, primary, secondary, solve_with(table.costs[primary], capacity)
    )
    if risk == "run" and quantile != "mean":
        solution, multiplier = _run_risk(
            table,
            primary,
            capacity,
            solution,
            multiplier,
            lambda c, room: _price_in(table, remaining, primary, secondary, solve_with(c, room)),
        )
    return table.plan(solution, remaining, primary, quantile, risk, bound, multiplier)


def _run_risk(
    table: _Table,
    primary: Resource,
    capacity: float,
    solution: Solution,
    multiplier: float,
    solve_at: Callable[[FloatArray, float], tuple[Solution, float, float]],
) -> tuple[Solution, float]:
    """Re-solve with the plan's total, not each option, budgeted at the quantile.

    The total of a plan is budgeted at ``sum(centre) + sqrt(sum(margin^2))``: an option's centre
    is its mean, or its quantile where a heavy tail puts the quantile below the mean, and its
    margin is the quantile less the centre (so ``centre + margin`` is the quantile). The root is
    concave, so its tangent at any ``D > 0``, ``D / 2 + V / (2 D)``, never understates it: a plan
    in which each option costs ``centre + margin^2 / (2 D)`` against ``capacity - D / 2`` fits the
    true constraint. ``D`` starts at the per-option plan's own root (that plan always fits, the
    root of a sum of squares being at most the sum) and follows each new plan's, `_RUN_ROUNDS`
    times; the best plan that fits is kept.

    The plan's total is then shared out as each option's planned cost, ``centre + margin^2 / D``
    at the kept plan's root ``D`` (never above its quantile), which sets the steps' caps.
    """
    rows = np.arange(table.values.shape[0])
    centre = np.minimum(table.means[primary], table.costs[primary])
    squared = (table.costs[primary] - centre) ** 2
    best, best_multiplier = solution, multiplier
    choice = solution.choice
    for _ in range(_RUN_ROUNDS):
        spread = math.sqrt(float(squared[rows, choice].sum()))
        if spread <= 0 or capacity - spread / 2 <= 0:
            break
        candidate, found, _ = solve_at(centre + squared / (2 * spread), capacity - spread / 2)
        choice = candidate.choice
        total = float(centre[rows, choice].sum()) + math.sqrt(float(squared[rows, choice].sum()))
        if total <= capacity * (1 + 1e-9) and candidate.value > best.value:
            best, best_multiplier = candidate, found
    spread = math.sqrt(float(squared[rows, best.choice].sum()))
    if spread > 0:
        table.costs[primary] = centre + squared / spread
    return best, best_multiplier


def _check_settings(
    resolution: float, resource: object, quantile: object, solver: object, risk: object
) -> None:
    """Name the first setting out of range, before any planning."""
    if not _MIN_RESOLUTION <= resolution <= 1:
        msg = f"must be in [{_MIN_RESOLUTION:g}, 1], got {resolution}"
        raise InvalidValueError("resolution", msg)
    for name, value, allowed in (
        ("resource", resource, get_args(Resource)),
        ("quantile", quantile, get_args(Quantile)),
        ("solver", solver, get_args(SolverName)),
        ("risk", risk, get_args(Risk)),
    ):
        if value not in allowed:
            raise InvalidValueError(name, f"must be one of {', '.join(allowed)}, got {value!r}")


def _price_in(
    table: _Table,
    remaining: Budget,
    primary: Resource,
    secondary: list[Resource],
    solve_for: Callable[[FloatArray], Solution],
) -> tuple[Solution, float, float]:
    """Solve, pricing the secondary resources in until the plan fits them all.

    An option's penalty is ``multiplier * sum(cost_r / budget_r)`` over the secondary resources
    ``r``. A larger multiplier never uses more of them, and a large enough one skips every
    option that uses any, which always fits; bisection finds the smallest multiplier that fits.
    Returns the solution (valued at the true values), the multiplier, and an upper bound on the
    optimum: for any multiplier, the Lagrangian dual (the penalised problem's LP bound plus
    ``multiplier * len(secondary)``) is at least the optimum of the real problem.
    """
    values = table.values
    rows = np.arange(values.shape[0])
    if not secondary:
        solution = solve_for(values)
        return solution, 0.0, solution.bound
    share = np.zeros_like(values)
    for r in secondary:
        limit = float(remaining.get(r) or 0.0)
        used = table.costs[r]
        with np.errstate(divide="ignore"):
            share += np.where(used > 0, used / limit if limit > 0 else np.inf, 0.0)
    usable = np.isfinite(share)
    finite_share = np.where(usable, share, 0.0)

    def fits(choice: IntArray) -> bool:
        return all(
            float(table.costs[r][rows, choice].sum()) <= float(remaining.get(r) or 0.0) * (1 + 1e-9)
            for r in secondary
        )

    def attempt(multiplier: float) -> tuple[Solution, float]:
        if math.isinf(multiplier):  # only options that use no secondary resource
            penalised = np.where(finite_share > 0, -np.inf, values)
        else:
            penalised = np.where(usable, values - multiplier * finite_share, -np.inf)
        penalised[:, 0] = 0.0
        solution = solve_for(penalised)
        true = Solution(
            solution.choice,
            float(values[rows, solution.choice].sum()),
            solution.cost,
            solution.bound,
            solution.method,
        )
        return true, solution.bound + multiplier * len(secondary)

    best, bound = attempt(0.0)
    if fits(best.choice):
        return best, 0.0, max(bound, best.value)
    low, high = 0.0, max(float(values.max(initial=0.0)), 1.0)
    while True:
        candidate, dual = attempt(high)
        bound = min(bound, dual)
        if fits(candidate.choice):
            best = candidate
            break
        if high > 1e12:
            # Shares too small for any finite multiplier to price: drop every option that
            # uses a secondary resource, which always fits.
            best, _ = attempt(math.inf)
            break
        low, high = high, high * 2
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        candidate, dual = attempt(middle)
        bound = min(bound, dual)
        if fits(candidate.choice):
            high = middle
            if candidate.value >= best.value:
                best = candidate
        else:
            low = middle
        if high - low <= 1e-6 * high:
            break
    # The multiplier prices identical steps alike, so it cannot mix options across them (the
    # duality gap); spend what it leaves on upgrades that fit every resource.
    resources = [primary, *secondary]
    choice = polish(
        values,
        [table.costs[r] for r in resources],
        [float(remaining.get(r) or 0.0) for r in resources],
        table.feasible & usable,
        best.choice,
    )
    value = float(values[rows, choice].sum())
    best = Solution(
        choice, value, float(table.costs[primary][rows, choice].sum()), best.bound, best.method
    )
    return best, high, max(bound, best.value)


class _Table:
    """The instance as arrays: column 0 is skip, then each step's options in its order."""

    def __init__(
        self,
        pending: Sequence[Step],
        columns: list[list[Option]],
        p_success: FloatArray,
        feasible: BoolArray,
        costs: dict[Resource, FloatArray],
        p99: dict[Resource, FloatArray],
        means: dict[Resource, FloatArray],
    ) -> None:
        self.pending = pending
        self.columns = columns
        self.p_success = p_success
        self.values = p_success * np.array([s.weight for s in pending]).reshape(-1, 1)
        self.feasible = feasible
        # The options a step can run: feasible, skip (column 0) excluded.
        self.runnable = feasible.copy()
        self.runnable[:, 0] = False
        self.costs = costs
        self.p99 = p99
        self.means = means

    @classmethod
    def build(
        cls,
        pending: Sequence[Step],
        forecasts: Sequence[Forecast],
        limited: tuple[Resource, ...],
        quantile: Quantile,
    ) -> _Table:
        """Check the forecasts against the steps and lay them out as arrays."""
        n, m = len(pending), 1 + max((len(step.options) for step in pending), default=0)
        columns: list[list[Option]] = []
        # (step id, option name) -> its cell, row-major in the (n, m) table; skip is column 0.
        cell: dict[tuple[str, str], int] = {}
        for i, step in enumerate(pending):
            if (step.id, SKIP) in cell:
                raise InvalidValueError(f"pending[{i}].id", f"duplicate step id {step.id!r}")
            cell[step.id, SKIP] = i * m
            options = [o for o in step.options if o.name != SKIP]
            for k, option in enumerate(options, start=1):
                cell[step.id, option.name] = i * m + k
            columns.append(options)
        found = np.array([cell.get((f.step_id, f.option), -1) for f in forecasts], dtype=np.intp)
        if found.size and found.min() < 0:
            _unknown(forecasts, int(found.argmin()), pending)
        # skip needs no forecast; one given for it is ignored (column 0 is always free).
        rows, cols = np.divmod(found, m)
        ran = cols > 0
        if not ran.all():
            rows, cols = rows[ran], cols[ran]
            forecasts = [f for f, r in zip(forecasts, ran.tolist(), strict=True) if r]
        feasible = np.zeros((n, m), dtype=bool)
        feasible[rows, cols] = True
        if int(feasible.sum()) < len(cell) - n:
            _missing(pending, columns, feasible)
        feasible[:, 0] = True
        take = attrgetter(quantile)

        def table(entries: list[float]) -> FloatArray:
            out = np.zeros((n, m))
            out[rows, cols] = entries  # a repeated forecast: the last one wins
            return out

        costs: dict[Resource, FloatArray] = {}
        p99: dict[Resource, FloatArray] = {}
        means: dict[Resource, FloatArray] = {}
        for r in limited:
            if r == "tokens":
                dists = [f.tokens for f in forecasts]
            else:
                dists = [
                    _cost(f, pending[i], columns[i][k - 1], r)
                    for f, i, k in zip(forecasts, rows.tolist(), cols.tolist(), strict=True)
                ]
            costs[r] = table([take(d) for d in dists])
            p99[r] = table([d.p99 for d in dists])
            means[r] = table([d.mean for d in dists])
        p_success = table([f.p_success for f in forecasts])
        return cls(pending, columns, p_success, feasible, costs, p99, means)

    def plan(
        self,
        solution: Solution,
        remaining: Budget,
        primary: Resource,
        quantile: Quantile,
        risk: Risk,
        bound: float,
        multiplier: float,
    ) -> Plan:
        n = len(self.pending)
        rows = np.arange(n)
        choice = solution.choice
        planned = {r: c[rows, choice] for r, c in self.costs.items()}
        # The hard cap of step i: its p99, at least what the plan budgets for it, at most what
        # the budget has left once the plan's later steps are paid for; for the step about to
        # run, once each later step the plan runs has its cheapest option paid for (see the
        # module's docstring). Counts round down.
        cheapest = {
            r: np.where(self.runnable, c, np.inf).min(axis=1) for r, c in self.costs.items()
        }
        caps: dict[str, list[float] | list[int]] = {}
        for r, costs in planned.items():
            later = np.concatenate([np.cumsum(costs[::-1])[::-1][1:], [0.0]])
            later[0] = float(np.where(choice[1:] > 0, cheapest[r][1:], 0.0).sum())
            free = np.maximum(float(remaining.get(r) or 0.0) - later, 0.0)
            cap = np.minimum(np.maximum(self.p99[r][rows, choice], costs), free)
            caps[r] = cap.tolist() if r == "usd" else np.floor(cap + 1e-9).astype(int).tolist()
        planned_lists = {r: c.tolist() for r, c in planned.items()}
        values = self.values[rows, choice].tolist()
        p_success = self.p_success[rows, choice].tolist()
        reasons, exhausted = self._reasons(choice, remaining, primary, quantile, risk)
        # What an exhausted step would take: its cheapest option (in the resource planned for).
        least = np.where(self.runnable, self.costs[primary], np.inf).argmin(axis=1)
        decisions = []
        for i, (step, j) in enumerate(zip(self.pending, choice.tolist(), strict=True)):
            if j:
                option = self.columns[i][j - 1]
                name = option.name
                step_cap = {"tool_calls": option.tool_calls} | {r: c[i] for r, c in caps.items()}
            else:
                name, step_cap = SKIP, _SKIP_CAP
            decisions.append(
                Decision(
                    step_id=step.id,
                    option=name,
                    cap=step_cap,  # validated into a Cap
                    expected_value=values[i],
                    expected_cost={r: c[i] for r, c in planned_lists.items()},
                    p_success=p_success[i],
                    reason=reasons[i],
                    exhausted=exhausted[i],
                    needs=(
                        {r: float(c[i, least[i]]) for r, c in self.costs.items()}
                        if exhausted[i]
                        else {}
                    ),
                )
            )
        return Plan(
            decisions=tuple(decisions),
            remaining=remaining,
            resource=primary,
            quantile=quantile,
            risk=risk,
            solver=solution.method,
            expected_value=solution.value,
            upper_bound=max(bound, solution.value),
            multiplier=multiplier,
        )

    def _reasons(
        self,
        choice: IntArray,
        remaining: Budget,
        primary: Resource,
        quantile: Quantile,
        risk: Risk,
    ) -> tuple[list[str], list[bool]]:
        """Each decision's one-line reason, and whether it is a skip for want of budget."""
        # Over the run, a step's planned cost is its share of the total at the quantile.
        at = f"its share of the run's {quantile}" if risk == "run" else quantile
        costs = self.costs[primary]
        left = float(remaining.get(primary) or 0.0)
        fmt = _formatter(primary)
        left_text = fmt(left)
        runnable = self.runnable
        can_run = cast("list[bool]", runnable.any(axis=1).tolist())
        can_fit = cast("list[bool]", (runnable & (costs <= left)).any(axis=1).tolist())
        # For each step the option of highest value, to say what the choice gave up.
        rows = np.arange(len(choice))
        richest = np.where(runnable, self.values, -np.inf).argmax(axis=1)
        given_up = (self.values[rows, richest] - self.values[rows, choice]).tolist()
        extra = (costs[rows, richest] - costs[rows, choice]).tolist()
        p_success = self.p_success[rows, choice].tolist()
        planned = costs[rows, choice].tolist()
        reasons = []
        exhausted = [False] * len(choice)
        for i, (j, k) in enumerate(zip(choice.tolist(), richest.tolist(), strict=True)):
            if j == 0:
                if not can_run[i]:
                    reasons.append("skip: the step has no option to run")
                elif not can_fit[i]:
                    reasons.append(f"skip: no option fits in {left_text} left")
                    exhausted[i] = True
                else:
                    reasons.append("skip: the budget is worth more on other steps")
                continue
            text = (
                f"{self.columns[i][j - 1].name}: p={p_success[i]:.2f} for "
                f"{fmt(planned[i])} at {at}, {left_text} left"
            )
            if given_up[i] > 1e-12:
                text += (
                    f"; {self.columns[i][k - 1].name} would add {given_up[i]:.2f} value for "
                    f"{fmt(extra[i])} more"
                )
            reasons.append(text)
        return reasons, exhausted


def _unknown(forecasts: Sequence[Forecast], index: int, pending: Sequence[Step]) -> NoReturn:
    """Raise for forecast ``index``: its step or option is unknown."""
    forecast = forecasts[index]
    if all(step.id != forecast.step_id for step in pending):
        msg = f"unknown step {forecast.step_id!r}"
        raise InvalidValueError(f"forecasts[{index}].step_id", msg)
    msg = f"step {forecast.step_id!r} has no option {forecast.option!r}"
    raise InvalidValueError(f"forecasts[{index}].option", msg)


def _missing(pending: Sequence[Step], columns: list[list[Option]], given: BoolArray) -> NoReturn:
    """Raise for the first (step, option) without a forecast."""
    for i, (step, options) in enumerate(zip(pending, columns, strict=True)):
        for k, option in enumerate(options, start=1):
            if not given[i, k]:
                msg = f"no forecast for step {step.id!r} option {option.name!r}"
                raise InvalidValueError("forecasts", msg)
    raise AssertionError("unreachable: every option has a forecast")


def _formatter(resource: Resource) -> Callable[[float], str]:
    """How amounts of ``resource`` read in a reason: ``$0.0123``, ``1,536 tokens``."""
    if resource == "usd":
        return "${:.4g}".format
    unit = resource.replace("_", " ")
    return lambda amount: f"{amount:,.0f} {unit}"


def _cost(forecast: Forecast, step: Step, option: Option, resource: Resource) -> CostForecast:
    """The forecast of ``resource``; derived from the option when the predictor gave none."""
    if resource == "tokens":
        return forecast.tokens
    given: CostForecast | None = getattr(forecast, resource)
    if given is not None:
        return given
    if resource == "tool_calls":
        return CostForecast.exact(option.tool_calls)
    return option.usd_forecast(forecast.tokens, step.input_tokens)


class Controller:
    """Plans the pending steps against what is left, again after every step.

    Args:
        predictor: where forecasts come from when `plan` is not given them.
        resource: the resource solved for exactly (others are priced in).
        quantile: cost quantile each option is budgeted at (the chance constraint).
        resolution: DP budget unit as a fraction of what is left.
        solver: ``"auto"``, ``"dp"`` or ``"greedy"``.
        risk: ``"step"`` (each option at ``quantile``) or ``"run"`` (the plan's total at it).
        policy: settings per budget level (`roi-agents tune`): each turn plans with the
            quantile and risk of the one nearest the budget per pending step, in place of
            ``quantile`` and ``risk``. Its resource must be ``resource``; a turn whose budget
            does not limit it plans at ``quantile`` and ``risk`` with a `RuntimeWarning`.

    Example:
        >>> from roi_agents.predict import PriorPredictor
        >>> controller = Controller(predictor=PriorPredictor())
        >>> plan = controller.plan(steps, Budget(tokens=20_000))  # doctest: +SKIP
        >>> plan.next.cap.tokens  # doctest: +SKIP
        1536
    """

    def __init__(
        self,
        *,
        predictor: Predictor | None = None,
        resource: Resource = "tokens",
        quantile: Quantile = "p90",
        resolution: float = 0.01,
        solver: SolverName = "auto",
        risk: Risk = "step",
        policy: Policy | None = None,
    ) -> None:
        _check_settings(resolution, resource, quantile, solver, risk)
        if policy is not None and not isinstance(policy, Policy):
            msg = f"must be a Policy (Policy.load reads a policy.json), got {type(policy).__name__}"
            raise InvalidValueError("policy", msg)
        if policy is not None and policy.resource != resource:
            msg = (
                f"was tuned on {policy.resource} budgets (its per_step counts {policy.resource}):"
                f" build the Controller with resource={policy.resource!r}, not {resource!r}"
            )
            raise InvalidValueError("policy", msg)
        self.predictor = predictor
        self.resource: Resource = resource
        self.quantile: Quantile = quantile
        self.resolution = resolution
        self.solver: SolverName = solver
        self.risk: Risk = risk
        self.policy = policy

    def plan(
        self,
        pending: Sequence[Step],
        remaining: Budget,
        *,
        forecasts: Sequence[Forecast] | None = None,
    ) -> Plan:
        """Plan the pending steps with what is really left.

        Raises:
            InvalidValueError: when no forecasts are given and the controller has no predictor,
                or on any of `allocate`'s input errors.
        """
        if forecasts is None:
            forecasts = self._predictor().predict(pending)
        return self._allocate(pending, forecasts, remaining)

    async def aplan(
        self,
        pending: Sequence[Step],
        remaining: Budget,
        *,
        forecasts: Sequence[Forecast] | None = None,
    ) -> Plan:
        """Async `plan`: awaits the predictor's batched forecast call."""
        if forecasts is None:
            forecasts = await self._predictor().apredict(pending)
        return self._allocate(pending, forecasts, remaining)

    def _predictor(self) -> Predictor:
        if self.predictor is None:
            msg = "pass forecasts= or build the Controller with a predictor"
            raise InvalidValueError("predictor", msg)
        return self.predictor

    def _allocate(
        self, pending: Sequence[Step], forecasts: Sequence[Forecast], remaining: Budget
    ) -> Plan:
        quantile, risk = self.quantile, self.risk
        if self.policy is not None and pending:
            left = remaining.get(self.policy.resource)
            if left is None:
                warnings.warn(
                    f"the budget does not limit {self.policy.resource}, which the policy's"
                    f" settings are chosen by: planned at {quantile}/{risk}",
                    RuntimeWarning,
                    stacklevel=3,
                )
            else:
                setting = self.policy.setting_for(left / len(pending))
                quantile, risk = setting.quantile, setting.risk
        return allocate(
            pending,
            forecasts,
            remaining,
            resource=self.resource,
            quantile=quantile,
            resolution=self.resolution,
            solver=self.solver,
            risk=risk,
        )
