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
    tolerance: float = 1e-3,
) -> Solution:
    """Solve one instance by the DP, the greedy, or ``"best"``.

    ``"best"`` runs the greedy first and returns it when its certified gap (LP bound minus its
    value) is within ``tolerance`` of the bound; otherwise it also runs the DP and returns the
    better of the two.
    """
    feasible = feasible & (costs <= capacity)
    hulls = _hulls(values, costs, feasible)
    greedy_choice, bound = _greedy(values, costs, hulls, capacity)
    rows = np.arange(values.shape[0])

    def finish(choice: IntArray, name: Literal["dp", "greedy"]) -> Solution:
        value = float(values[rows, choice].sum())
        return Solution(choice, value, float(costs[rows, choice].sum()), max(bound, value), name)

    greedy = finish(greedy_choice, "greedy")
    if method == "greedy" or (method == "best" and bound - greedy.value <= tolerance * bound):
        return greedy
    dp_choice = _dp(values, costs, feasible, capacity, bins)
    dp = finish(polish(values, [costs], [capacity], feasible, dp_choice), "dp")
    if method == "dp" or dp.value >= greedy.value - 1e-12:
        return dp
    return greedy


def lp_bound(values: FloatArray, costs: FloatArray, feasible: BoolArray, capacity: float) -> float:
    """Optimum of the LP relaxation: an upper bound on the integer optimum."""
    feasible = feasible & (costs <= capacity)
    return _greedy(values, costs, _hulls(values, costs, feasible), capacity)[1]


def _dp(
    values: FloatArray, costs: FloatArray, feasible: BoolArray, capacity: float, bins: int
) -> IntArray:
    """Exact multiple-choice knapsack over ``bins`` budget units, vectorised over the budget."""
    n = values.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    if capacity > 0:
        # A tiny relative slack keeps an exact multiple of delta from rounding up a unit.
        with np.errstate(over="ignore"):
            scaled = np.minimum(costs / capacity, 1.0) * bins
        units = np.ceil(scaled - 1e-9).astype(np.intp)
    else:
        bins = 0
        units = np.zeros(costs.shape, dtype=np.intp)
    units = np.where(feasible, np.clip(units, 0, bins), bins + 1)
    # For every (step, option, budget b): the budget index before taking the option, and
    # whether it fits. Each stage of the recursion is then one gather. int32 (bins are at most
    # 10**6) keeps the index table small: large fresh temporaries cost page faults every call.
    budget_axis = np.arange(bins + 1, dtype=np.int32)
    before = budget_axis[None, None, :] - units.astype(np.int32)[:, :, None]
    misfit = before < 0
    np.maximum(before, 0, out=before)
    gain = values[:, :, None]
    best = np.zeros(bins + 1)
    choice = np.empty((n, bins + 1), dtype=np.intp)
    for i in range(n):
        candidates = best[before[i]] + gain[i]
        np.putmask(candidates, misfit[i], -np.inf)
        # argmax keeps the first maximum: on a tie the lower column (skip first) wins.
        choice[i] = candidates.argmax(axis=0)
        best = candidates[choice[i], budget_axis]
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

    A cost is measured as the sum over resources of its share of each capacity. Never lowers
    the value and never breaks feasibility.
    """
    choice = choice.copy()
    rows = np.arange(values.shape[0])
    scale = [max(capacity, 1e-300) for capacity in capacities]
    while True:
        # Per step, its best upgrade by extra value per (normalised) extra cost; then apply the
        # steps' upgrades in that order while they still fit. Repeat until nothing changes.
        extra_value = values - values[rows, choice][:, None]
        weight = sum(
            np.maximum(cost - cost[rows, choice][:, None], 0.0) / s
            for cost, s in zip(costs, scale, strict=True)
        )
        ok = feasible & (extra_value > 1e-12)
        for cost, capacity in zip(costs, capacities, strict=True):
            room = capacity - float(cost[rows, choice].sum())
            ok &= cost - cost[rows, choice][:, None] <= room + 1e-12 * max(capacity, 1.0)
        ratio = np.where(ok, extra_value / np.maximum(weight, 1e-12), -np.inf)
        best = ratio.argmax(axis=1)
        candidates = np.flatnonzero(ok[rows, best])
        if candidates.size == 0:
            return choice
        left = [
            c - float(cost[rows, choice].sum()) for cost, c in zip(costs, capacities, strict=True)
        ]
        changed = False
        for i in candidates[np.argsort(-ratio[candidates, best[candidates]])].tolist():
            j = int(best[i])
            extra = [float(cost[i, j] - cost[i, choice[i]]) for cost in costs]
            if all(
                e <= room + 1e-12 * max(c, 1.0)
                for e, room, c in zip(extra, left, capacities, strict=True)
            ):
                left = [room - e for room, e in zip(left, extra, strict=True)]
                choice[i] = j
                changed = True
        if not changed:
            return choice


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
) -> tuple[IntArray, float]:
    """Integer greedy over hull increments, and the LP optimum as an upper bound.

    After the first increment that does not fit (the LP's fractional one), its step is frozen
    and later increments of the other steps are still taken when they fit.
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
    fractional_seen = False
    frozen: set[int] = set()
    for _, i, j, dc, dv in increments:
        if i in frozen:
            continue
        if dc <= left:
            picked[i] = j
            left -= dc
            if not fractional_seen:
                bound += dv
        else:
            if not fractional_seen:
                bound += dv * left / dc
                fractional_seen = True
            frozen.add(i)
    return np.array(picked, dtype=np.intp), bound
