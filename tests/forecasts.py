"""Fixed forecasts for tests that need the controller's input, not a predictor."""

from roi_agents import CostForecast, Forecast


def fixed_forecasts(steps, table):
    """One forecast per (step, option); table: option -> (p_success, p50, p90, p99 tokens)."""
    out = []
    for step in steps:
        for option in step.options:
            p, p50, p90, p99 = table[option.name]
            cost = CostForecast(mean=p50, p50=p50, p90=p90, p99=p99)
            out.append(Forecast(step_id=step.id, option=option.name, p_success=p, tokens=cost))
    return out
