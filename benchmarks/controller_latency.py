"""Time `Controller.plan` against the number of pending steps and the budget resolution.

Run: ``.venv/bin/python benchmarks/controller_latency.py [--json PATH]``. Forecasts are given (the
predictor's time is not counted); each cell plans the same random instance ``--repeat`` times
and reports the median and the 99th percentile in milliseconds, measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from roi_agents import Budget, Controller, CostForecast, Forecast, Option, Step


def instance(n: int, m: int, seed: int) -> tuple[list[Step], list[Forecast], Budget]:
    rng = np.random.default_rng(seed)
    options = tuple(Option(name=f"o{j}") for j in range(m))
    steps = [Step(id=f"s{i}", text=f"step {i}", options=options) for i in range(n)]
    forecasts = []
    total = 0.0
    for step in steps:
        for j, option in enumerate(step.options):
            p50 = float(rng.lognormal(4 + j, 0.5))
            forecasts.append(
                Forecast(
                    step_id=step.id,
                    option=option.name,
                    p_success=float(min(0.3 + 0.15 * j + rng.normal(0, 0.05), 1.0)),
                    tokens=CostForecast(mean=p50 * 1.1, p50=p50, p90=p50 * 1.8, p99=p50 * 3),
                )
            )
            total += p50 * 1.8 / m
    return steps, forecasts, Budget(tokens=int(total * 0.6))


def time_plan(controller: Controller, n: int, m: int, repeat: int) -> tuple[float, float, str]:
    steps, forecasts, budget = instance(n, m, seed=n * 1000 + m)
    for _ in range(20):  # warm up
        controller.plan(steps, budget, forecasts=forecasts)
    times = []
    solver = ""
    for _ in range(repeat):
        started = time.perf_counter()
        plan = controller.plan(steps, budget, forecasts=forecasts)
        times.append(time.perf_counter() - started)
        solver = plan.solver
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), solver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for solver in ("auto", "dp", "greedy"):
        for n in (10, 25, 50, 100, 200):
            for resolution in (0.05, 0.01, 0.001):
                if solver == "greedy" and resolution != 0.01:
                    continue  # the greedy does not discretise
                controller = Controller(resolution=resolution, solver=solver)  # type: ignore[arg-type]
                p50, p99, used = time_plan(controller, n, 5, args.repeat)
                rows.append(
                    {
                        "solver": solver,
                        "steps": n,
                        "options": 5,
                        "resolution": resolution,
                        "p50_ms": p50,
                        "p99_ms": p99,
                        "plan_solver": used,
                    }
                )
    table = Table(title="Controller.plan latency (forecasts given), 5 options per step")
    for column in ("solver", "steps", "resolution", "p50 ms", "p99 ms", "kept"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["solver"],
            str(r["steps"]),
            f"{r['resolution']:g}",
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            r["plan_solver"],
        )
    Console().print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
