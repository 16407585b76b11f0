import re

from live import load_example


def test_two_budget_example_respects_both_budgets():
    lines = load_example("plan_with_two_budgets").main()
    assert len(lines) == 6
    lefts = [re.search(r"left=\s*(\d+) tok (\d+) calls", line).groups() for line in lines]
    tokens = [int(t) for t, _ in lefts]
    calls = [int(c) for _, c in lefts]
    assert all(t >= 0 for t in tokens)
    assert tokens == sorted(tokens, reverse=True)
    assert all(c >= 0 for c in calls)
    # Each search makes 2 tool calls and the budget has 4.
    chosen = [re.search(r"\s(fast|deep|search|skip)\s+cap=", line).group(1) for line in lines]
    assert chosen.count("search") <= 2
    assert calls[-1] == 4 - 2 * chosen.count("search")
