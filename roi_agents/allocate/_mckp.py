"""Multiple-choice knapsack solvers over plain arrays.

An instance has ``n`` steps and up to ``m`` options per step, given as ``(n, m)`` arrays of
values and costs; ``feasible[i, j]`` is False for padding and for options the step lacks. Column 0
is ``skip`` (value 0, cost 0), so every instance has a feasible solution. Values may be negative
(a priced-in second resource); such options are never better than skip.

The dynamic programme is exact up to the discretisation of the budget axis. Costs are rounded
*up* to whole units of ``delta = capacity / bins``, so every solution it returns is feasible at
the true costs. Each chosen option's cost grows by less than ``delta`` in rounding, so every
solution whose true cost is at most ``capacity - n * delta`` is still representable, hence::

    OPT(capacity - n * delta) <= value(DP) <= OPT(capacity)

where ``OPT(B)`` is the optimum at budget ``B`` and ``n`` the number of steps. What rounding
leaves unspent is then offered to upgrades, best value per unit cost first, which can only add
value.

Before the DP runs, options that cannot be in any solution better than the greedy's are removed
(variable reduction by Lagrangian reduced costs, as in Pisinger's MCKP algorithms), steps left
with one option are fixed to it, and the DP runs over the other steps only, on what the fixed
ones leave. The bound above still holds, with ``n`` and ``delta`` the (smaller) number of free
steps and unit: an optimal solution uses no removed option, so it is a solution of the reduced
problem. On typical instances this leaves a handful of free steps, and the DP costs little.

The greedy solves the LP relaxation over each step's upper convex hull of (cost, value), taking
hull increments by decreasing efficiency. Its LP optimum is an upper bound on ``OPT(capacity)``,
reported with every solution, so ``bound - value`` bounds the optimality gap of either method.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["Method", "Solution", "lp_bound", "polish", "solve"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]
Method = Literal["dp", "greedy", "best"]


@dataclass(frozen=True, slots=True)
class Solution:
    """Chosen column per step, its total value and cost, the LP upper bound, and its method."""

    choice: IntArray
    value: float
    cost: float
    bound: float
    method: Literal["dp", "greedy"]


def solve(
    values: FloatArray,
    costs: FloatArray,
    feasible: BoolArray,
    capacity: float,
    *,
    bins: int,
    method: Method,
    tolerance: float,
) -> Solution:
    """Solve one instance by the DP, the greedy, or ``"best"``.

    ``"best"`` runs the greedy first and returns it when its certified gap (LP bound minus its
    value) is within ``tolerance`` of the bound; otherwise it also runs the DP and returns the
    better of the two.
    """
    feasible = feasible & (costs <= capacity)
    hulls = _hulls(values, costs, feasible)
    greedy_choice, bound, slope = _greedy(values, costs, hulls, capacity)
    rows = np.arange(values.shape[0])

    def finish(choice: IntArray, name: Literal["dp", "greedy"]) -> Solution:
        value = float(values[rows, choice].sum())
        return Solution(choice, value, float(costs[rows, choice].sum()), max(bound, value), name)

    greedy = finish(greedy_choice, "greedy")
    if method == "greedy" or (method == "best" and bound - greedy.value <= tolerance * bound):
        return greedy
    keep = feasible & _useful(values, costs, feasible, capacity, slope, greedy.value)
    keep[rows, greedy_choice] = True
    free = keep.sum(axis=1) > 1
    dp_choice = keep.argmax(axis=1)  # a step left with one option takes it
    left = capacity - float(costs[~free, dp_choice[~free]].sum())
    reduced = _dp(values[free], costs[free], keep[free], left, bins)
    if reduced is None:  # rounding up left the reduced problem no solution: solve it all
        full = _dp(values, costs, feasible, capacity, bins)
        assert full is not None, "skip always fits"
        dp_choice = full
    else:
        dp_choice[free] = reduced
    dp = finish(polish(values, [costs], [capacity], feasible, dp_choice), "dp")
    if method == "dp" or dp.value >= greedy.value - 1e-12:
        return dp
    return greedy


def lp_bound(values: FloatArray, costs: FloatArray, feasible: BoolArray, capacity: float) -> float:
    """Optimum of the LP relaxation: an upper bound on the integer optimum."""
    feasible = feasible & (costs <= capacity)
    return _greedy(values, costs, _hulls(values, costs, feasible), capacity)[1]


def _useful(
    values: FloatArray,
    costs: FloatArray,
    feasible: BoolArray,
    capacity: float,
    slope: float,
    lower: float,
) -> BoolArray:
    """Options that may be in a solution worth at least ``lower``.

    For any ``slope >= 0``, ``slope * capacity + sum_i max_j (v_ij - slope * c_ij)`` bounds
    every solution from above (Lagrangian relaxation of the budget); forcing option ``(i, j)``
    lowers that bound by its reduced cost. Options whose bound falls below ``lower`` go.
    """
    with np.errstate(invalid="ignore"):
        reduced = np.where(feasible, values - slope * costs, -np.inf)
    best = reduced.max(axis=1, keepdims=True)
    bound = slope * capacity + float(best.sum())
    tolerance = 1e-9 * max(1.0, abs(bound))
    useful: BoolArray = bound - (best - reduced) >= lower - tolerance
    return useful


def _dp(
    values: FloatArray, costs: FloatArray, feasible: BoolArray, capacity: float, bins: int
) -> IntArray | None:
    """Exact multiple-choice knapsack over ``bins`` budget units, vectorised over the budget.

    ``None`` when no choice fits at the rounded costs (only when a step may not skip).
    """
    n = values.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    feasible = feasible & (costs <= capacity)
    if capacity > 0:
        # A tiny relative slack keeps an exact multiple of delta from rounding up a unit.
        with np.errstate(over="ignore"):
            scaled = np.minimum(costs / capacity, 1.0) * bins
        units = np.ceil(scaled - 1e-9).astype(np.intp)
    else:
        bins = 0
        units = np.zeros(costs.shape, dtype=np.intp)
    units = np.where(feasible, np.clip(units, 0, bins), bins + 1)
    # For every (step, option, budget b): the budget index before taking the option, or the
    # sentinel index bins + 1 (value -inf) where it does not fit. Each stage of the recursion
    # is then one gather, one add and two reductions. int32 (bins are at most 10**6) keeps the
    # index table small: large fresh temporaries cost page faults every call.
    budget_axis = np.arange(bins + 1, dtype=np.int32)
    before = budget_axis[None, None, :] - units.astype(np.int32)[:, :, None]
    before[before < 0] = bins + 1
    gain = np.repeat(values[:, :, None], bins + 1, axis=2)
    best = np.zeros(bins + 2)
    best[-1] = -np.inf
    reachable = best[:-1]
    candidates = np.empty(before.shape[1:])
    choice = np.empty((n, bins + 1), dtype=np.intp)
    for i in range(n):
        np.take(best, before[i], out=candidates)
        candidates += gain[i]
        # argmax keeps the first maximum: on a tie the lower column (skip first) wins.
        candidates.argmax(axis=0, out=choice[i])
        candidates.max(axis=0, out=reachable)
    if reachable[bins] == -np.inf:
        return None
    picked = np.zeros(n, dtype=np.intp)
    b = bins
    for i in range(n - 1, -1, -1):
        j = int(choice[i, b])
        picked[i] = j
        b -= int(units[i, j])
    return picked


def polish(
    values: FloatArray,
    costs: list[FloatArray],
    capacities: list[float],
    feasible: BoolArray,
    choice: IntArray,
) -> IntArray:
    """Spend what is left on upgrades that fit every resource, best value per cost first.

    A cost is measured as the sum over resources of its share of each capacity. Each round
    takes every step's best upgrade that still fits, in order of value per cost, up to the
    first that no longer fits in what the earlier ones left; rounds repeat until none fits.
    Never lowers the value and never breaks feasibility.
    """
    choice = choice.copy()
    rows = np.arange(values.shape[0])
    slack = [1e-12 * max(capacity, 1.0) for capacity in capacities]
    while True:
        extra_value = values - values[rows, choice][:, None]
        extra = [cost - cost[rows, choice][:, None] for cost in costs]
        room = [
            c - float(cost[rows, choice].sum()) for cost, c in zip(costs, capacities, strict=True)
        ]
        ok = feasible & (extra_value > 1e-12)
        weight = np.zeros_like(values)
        for e, r, s, c in zip(extra, room, slack, capacities, strict=True):
            ok &= e <= r + s
            weight += np.maximum(e, 0.0) / max(c, 1e-300)
        ratio = np.where(ok, extra_value / np.maximum(weight, 1e-12), -np.inf)
        best = ratio.argmax(axis=1)
        candidates = np.flatnonzero(ok[rows, best])
        if candidates.size == 0:
            return choice
        order = candidates[np.argsort(-ratio[candidates, best[candidates]], kind="stable")]
        fits = np.ones(order.size, dtype=bool)
        for e, r, s in zip(extra, room, slack, strict=True):
            fits &= np.cumsum(e[order, best[order]]) <= r + s
        # The first always fits on its own (ok); take the run of those that fit together.
        taken = order[: order.size if fits.all() else max(int(fits.argmin()), 1)]
        choice[taken] = best[taken]


def _hulls(values: FloatArray, costs: FloatArray, feasible: BoolArray) -> list[list[int]]:
    """Per step, the columns on the upper convex hull of (cost, value), starting at skip."""
    order = np.lexsort((-values, costs), axis=-1)  # by cost, then by value, descending
    value_rows, cost_rows, ok_rows = values.tolist(), costs.tolist(), feasible.tolist()
    hulls: list[list[int]] = []
    for cols, v, c, ok in zip(order.tolist(), value_rows, cost_rows, ok_rows, strict=True):
        hull = [0]
        for j in cols:
            if j == 0 or not ok[j] or v[j] <= v[hull[-1]]:
                continue  # padding, or dominated: costs at least as much for no more value
            if c[j] == c[hull[-1]]:
                hull.pop()
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                # b lies on or below the chord a -> j: not on the upper hull.
                if (v[b] - v[a]) * (c[j] - c[a]) <= (v[j] - v[a]) * (c[b] - c[a]):
                    hull.pop()
                else:
                    break
            hull.append(j)
        hulls.append(hull)
    return hulls


def _greedy(
    values: FloatArray, costs: FloatArray, hulls: list[list[int]], capacity: float
) -> tuple[IntArray, float, float]:
    """Integer greedy over hull increments, the LP optimum as an upper bound, and its slope.

    After the first increment that does not fit (the LP's fractional one), its step is frozen
    and later increments of the other steps are still taken when they fit. The slope is that
    increment's efficiency (the LP's price of the budget), 0 when everything fits.
    """
    value_rows, cost_rows = values.tolist(), costs.tolist()
    increments: list[tuple[float, int, int, float, float]] = []
    picked = [hull[0] for hull in hulls]
    bound = 0.0
    left = capacity
    for i, hull in enumerate(hulls):
        v, c = value_rows[i], cost_rows[i]
        bound += v[hull[0]]
        left -= c[hull[0]]
        for a, b in pairwise(hull):
            dc, dv = c[b] - c[a], v[b] - v[a]
            increments.append((dv / dc if dc > 0 else np.inf, i, b, dc, dv))
    # Within a step the hull's efficiencies strictly decrease, so the sort keeps their order.
    increments.sort(key=lambda s: -s[0])
    slope: float | None = None
    frozen: set[int] = set()
    for efficiency, i, j, dc, dv in increments:
        if i in frozen:
            continue
        if dc <= left:
            picked[i] = j
            left -= dc
            if slope is None:
                bound += dv
        else:
            if slope is None:
                bound += dv * left / dc
                slope = efficiency
            frozen.add(i)
    return np.array(picked, dtype=np.intp), bound, slope or 0.0
