"""What the budget turn adds to a decision, beside `Controller.plan`'s own time.

Run: ``.venv/bin/python benchmarks/turn_overhead.py [--steps 30] [--options 5] [--repeat 200]``.

On one random instance (the same as ``controller_latency.py``'s) it times, per decision, in this
one run: ``Controller.plan`` alone, and the turn around it (`BudgetSession.decide`'s balance read,
then `BudgetSession.call`: reserve in the in-memory ledger, open the decision span, charge,
commit), sync and async. Each call is charged nothing, so every turn plans the same instance. It
prints the medians and the ratio of the turn's extra time to the plan's. Absolute times differ
across machines by 2x and more; the ratio is what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from controller_latency import instance

from roi_agents import BudgetSession, Controller, Spend


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--options", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps, forecasts, budget = instance(args.steps, args.options, args.seed)
    controller = Controller()

    plan, turn, aturn = [], [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        decision = controller.plan(steps, budget, forecasts=forecasts).next
        plan.append(time.perf_counter() - start)
    # Each call is charged nothing, so every turn plans the same instance as the plan alone.
    session = BudgetSession(budget, controller=controller)
    for _ in range(args.repeat):
        start = time.perf_counter()
        decision = session.decide(steps, forecasts)
        option = steps[0].option(decision.option)
        with session.call(decision, option, prompt=50, step=steps[0]) as call:
            call.charge(Spend())
        turn.append(time.perf_counter() - start)

    async def arun() -> None:
        for _ in range(args.repeat):
            start = time.perf_counter()
            decision = await session.adecide(steps, forecasts)
            option = steps[0].option(decision.option)
            async with session.call(decision, option, prompt=50, step=steps[0]) as call:
                await call.acharge(Spend())
            aturn.append(time.perf_counter() - start)

    asyncio.run(arun())
    p, t, a = _median_ms(plan), _median_ms(turn), _median_ms(aturn)
    result = {
        "steps": args.steps,
        "options": args.options,
        "repeat": args.repeat,
        "plan_ms": round(p, 3),
        "turn_ms": round(t, 3),
        "aturn_ms": round(a, 3),
        "extra_over_plan": round((t - p) / p, 3),
        "async_extra_over_plan": round((a - p) / p, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
