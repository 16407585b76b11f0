"""A budgeted, traced run shared by the telemetry tests."""

from forecasts import fixed_forecasts

from roi_agents import Budget, Controller, Option, Spend, Step
from roi_agents.telemetry import RunTrace

OPTIONS = (Option(name="fast", model="small-model"), Option(name="deep", model="big-model"))
# (p_success, p50 = p90 = p99 tokens)
TABLE = {"fast": (0.6, 100, 100, 100), "deep": (0.9, 400, 400, 400)}
# What each option really spends: (input, output) tokens.
REAL = {"fast": (30, 90), "deep": (30, 450)}


def _run(tracer_provider, meter_provider, budget=1000, steps=5, run_id="r1"):
    """A budgeted run: plan, trace the decision, 'execute' with REAL costs, record."""
    pending = [Step(id=f"s{i}", group="demo", options=OPTIONS) for i in range(steps)]
    controller = Controller()
    decisions = []
    with RunTrace(
        Budget(tokens=budget),
        run_id=run_id,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    ) as run:
        while pending:
            forecasts = fixed_forecasts(pending, TABLE)
            plan = controller.plan(pending, run.remaining, forecasts=forecasts)
            with run.decision(pending[0], plan, forecasts) as step:
                decision = plan.next
                decisions.append(decision)
                if not decision.skipped:
                    tokens_in, tokens_out = REAL[decision.option]
                    out = min(tokens_out, decision.cap.tokens - tokens_in)
                    step.record(
                        Spend(input_tokens=tokens_in, output_tokens=out),
                        success=1.0 if decision.option == "deep" else 0.0,
                    )
            pending = pending[1:]
    return decisions, run
