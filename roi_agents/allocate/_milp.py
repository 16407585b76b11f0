"""The exact multiple-choice knapsack as a mixed-integer programme, solved by HiGHS.

Used for the clairvoyant oracle of the replay benchmark and to check the DP in tests; too slow
for planning turns.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np

from roi_agents.allocate._mckp import BoolArray, FloatArray, IntArray
from roi_agents.errors import MissingExtra

try:
    import highspy
except ModuleNotFoundError as error:
    raise MissingExtra("bench", error.name) from error

__all__ = ["solve_milp"]

_local = threading.local()


def _solver() -> highspy.Highs:
    """One silent HiGHS instance per thread.

    HiGHS prints a banner to the process's stdout when an instance is built, before any option
    can turn output off, so the first build runs with file descriptor 1 pointed at /dev/null.
    """
    solver: highspy.Highs | None = getattr(_local, "solver", None)
    if solver is None:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 1)
                solver = highspy.Highs()  # type: ignore[no-untyped-call]
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        solver.setOptionValue("output_flag", False)
        solver.setOptionValue("mip_rel_gap", 0.0)
        solver.setOptionValue("mip_abs_gap", 1e-12)
        _local.solver = solver
    solver.clearModel()
    return solver


def solve_milp(
    values: FloatArray,
    costs: FloatArray,
    feasible: BoolArray,
    capacities: list[float],
    extra_costs: list[FloatArray] | None = None,
) -> tuple[IntArray, float]:
    """Maximise total value, one column per step, every resource within its capacity.

    Args:
        values: ``(n, m)`` values; column 0 is skip.
        costs: ``(n, m)`` costs of the first resource.
        feasible: ``(n, m)`` mask of real options.
        capacities: one capacity per resource (the first for ``costs``).
        extra_costs: ``(n, m)`` costs of the other resources, in the order of ``capacities``.

    Returns:
        The chosen column per step and the optimal value.
    """
    n, m = values.shape
    if n == 0:
        return np.zeros(0, dtype=np.intp), 0.0
    resources = [costs, *(extra_costs or [])]
    cols = [(i, j) for i in range(n) for j in range(m) if feasible[i, j] or j == 0]
    h = _solver()
    inf = highspy.kHighsInf
    for _ in cols:
        h.addVar(0.0, 1.0)
    index = {col: k for k, col in enumerate(cols)}
    h.changeColsCost(
        len(cols), np.arange(len(cols), dtype=np.int32), np.array([-values[i, j] for i, j in cols])
    )
    h.changeColsIntegrality(
        len(cols),
        np.arange(len(cols), dtype=np.int32),
        np.array([highspy.HighsVarType.kInteger] * len(cols)),
    )
    for i in range(n):
        members = np.array([index[(i, j)] for j in range(m) if (i, j) in index], dtype=np.int32)
        h.addRow(1.0, 1.0, len(members), members, np.ones(len(members)))
    for cost, capacity in zip(resources, capacities, strict=True):
        idx = np.arange(len(cols), dtype=np.int32)
        h.addRow(-inf, capacity, len(cols), idx, np.array([cost[i, j] for i, j in cols]))
    h.run()
    x = np.array(h.getSolution().col_value)
    choice = np.zeros(n, dtype=np.intp)
    for (i, j), xv in zip(cols, x, strict=True):
        if xv > 0.5:
            choice[i] = j
    rows = np.arange(n)
    return choice, float(values[rows, choice].sum())
