"""The in-memory ledger's own clock: periods and expiry (its agreement with the SQL ledgers is
tested in tests/integration/test_ledger_agreement.py)."""

import pytest

from roi_agents.errors import BudgetExceeded
from roi_agents.ledger import Amount, MemoryLedger, ScopeBudget


def test_periods_start_at_the_utc_day_and_month_of_the_clock():
    now = [1_767_225_600.0 + 3600]  # 2026-01-01 01:00 UTC
    ledger = MemoryLedger(clock=lambda: now[0])
    for scope, period in (("daily", "daily"), ("monthly", "monthly"), ("forever", None)):
        ledger.set_budget(ScopeBudget(scope=scope, tokens=100, period=period))
        ledger.commit(ledger.reserve(scope, Amount(tokens=70), ttl=60), Amount(tokens=70))
    now[0] += 86400  # the next day
    assert [ledger.balance(s).remaining["tokens"] for s in ("daily", "monthly", "forever")] == [
        100,
        30,
        30,
    ]
    now[0] += 31 * 86400  # the next month
    assert ledger.balance("monthly").remaining["tokens"] == 100
    assert ledger.balance("forever").committed.tokens == 70


def test_expired_holds_leave_the_counters_without_a_sweep():
    now = [1000.0]
    ledger = MemoryLedger(clock=lambda: now[0])
    ledger.set_budget(ScopeBudget(scope="t", tokens=100))
    holds = [ledger.reserve("t", Amount(tokens=10), ttl=5) for _ in range(10)]
    with pytest.raises(BudgetExceeded):
        ledger.reserve("t", Amount(tokens=1), ttl=5)
    now[0] += 5
    assert ledger.balance("t").reserved == Amount()
    assert {ledger.get(h.id).state for h in holds} == {"expired"}
    assert ledger.sweep() == 0  # nothing left: every call takes them out as it looks
    assert ledger.commit(holds[0], Amount(tokens=4)).over_commit  # late: recorded, flagged
    assert ledger.balance("t").committed.tokens == 4
