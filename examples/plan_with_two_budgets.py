"""Plan a research task's steps under a token budget and a tool-call budget.

Run: ``.venv/bin/python examples/plan_with_two_budgets.py``. Forecasts come from a prior fitted on
a few observed outcomes; the controller re-plans after every (simulated) step and prints why.
"""

from __future__ import annotations

from roi_agents import Budget, Controller, Option, PriorPredictor, Spend, Step

OPTIONS = (
    Option(name="fast", max_tokens=300, tags=("fast",)),
    Option(name="deep", max_tokens=3000, tags=("deep",)),
    Option(name="search", max_tokens=600, tool_calls=2, tags=("tool",)),
)
TASKS = [
    "List the open questions in the brief",
    "Find recent figures on the market size",
    "Compare the three vendors' pricing",
    "Check the legal constraints for the EU",
    "Draft the executive summary",
    "Proofread the summary",
]
# What each option really costs and how often it succeeds in this make-believe world.
OUTCOMES = {"fast": (180, 0.55), "deep": (1800, 0.9), "search": (500, 0.8)}


def main() -> list[str]:
    prior = PriorPredictor(group_by=False)
    warmup = Step(id="warmup", options=OPTIONS)
    for name, (tokens, p) in OUTCOMES.items():
        for k in range(10):
            spend = Spend(output_tokens=int(tokens * (0.6 + 0.08 * k)), tool_calls=0)
            prior.observe(warmup, name, spend, success=float(k < 10 * p))
    steps = [Step(id=f"step-{i}", text=t, options=OPTIONS) for i, t in enumerate(TASKS)]
    remaining = Budget(tokens=6000, tool_calls=4)
    controller = Controller(predictor=prior)
    lines = []
    while steps:
        decision = controller.plan(steps, remaining).next
        assert decision is not None
        option = steps[0].option(decision.option)
        tokens = 0 if decision.skipped else min(OUTCOMES[option.name][0], decision.cap.tokens or 0)
        spend = Spend(output_tokens=tokens, tool_calls=option.tool_calls)
        remaining = remaining.remaining_after(spend)
        lines.append(
            f"{steps[0].text:<42} {decision.option:<7} cap={decision.cap.tokens!s:>5} "
            f"left={remaining.tokens:>5} tok {remaining.tool_calls} calls | {decision.reason}"
        )
        steps = steps[1:]
    return lines


if __name__ == "__main__":
    print("\n".join(main()))
