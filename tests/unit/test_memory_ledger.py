"""The in-memory ledger answers every call as the SQL ledger does (SQLite is the reference)."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roi_agents.errors import BudgetExceeded, RoiAgentsError
from roi_agents.ledger import Amount, MemoryLedger, ScopeBudget, SQLiteLedger

SCOPES = ["a", "a/b", "a/b/c", "a/d", "e"]

amounts = st.builds(
    Amount,
    tokens=st.integers(0, 200),
    usd=st.sampled_from([0.0, 0.001, 0.25]),
    tool_calls=st.integers(0, 3),
)


def _budget(scopes):
    return st.tuples(
        st.just("budget"),
        scopes,
        st.one_of(st.none(), st.integers(0, 600)),
        st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0])),
        st.one_of(st.none(), st.integers(0, 8)),
    )


# Every scope but the last gets a budget first (the last stays unknown until a call sets it).
setup = st.tuples(*(_budget(st.just(scope)) for scope in SCOPES[:-1]))
_reserve = st.tuples(
    st.just("reserve"),
    st.sampled_from(SCOPES),
    amounts,
    st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
)
_commit = st.tuples(st.just("commit"), st.integers(0, 30), amounts)
_balance = st.tuples(st.just("balance"), st.sampled_from(SCOPES))
# Weighted towards what changes and reads the counters.
calls = st.one_of(
    _budget(st.sampled_from(SCOPES)),
    _reserve,
    _reserve,
    _reserve,
    _commit,
    _commit,
    st.tuples(st.just("release"), st.integers(0, 30)),
    _balance,
    _balance,
)


def _outcome(call):
    """What a call answered, ids left out: a value, or the error and its figures."""
    try:
        value = call()
    except BudgetExceeded as error:
        return ("exceeded", error.scope, error.resource, error.limit, error.requested)
    except RoiAgentsError as error:
        return (type(error).__name__,)
    if value is None:
        return None
    dumped = value.model_dump()
    for key in ("id", "created_at", "expires_at"):
        dumped.pop(key, None)
    return dumped


def _play(ledger, script):
    holds, out = [], []
    for step in script:
        kind = step[0]
        if kind == "budget":
            _, scope, tokens, usd, tool_calls = step
            budget = ScopeBudget(scope=scope, tokens=tokens, usd=usd, tool_calls=tool_calls)
            out.append(_outcome(lambda b=budget: ledger.set_budget(b)))
        elif kind == "reserve":
            _, scope, amount, key = step

            def reserve(scope=scope, amount=amount, key=key):
                hold = ledger.reserve(scope, amount, ttl=600, idempotency_key=key)
                holds.append(hold.id)
                return hold

            out.append(_outcome(reserve))
        elif kind in ("commit", "release") and holds:
            hold = holds[step[1] % len(holds)]
            if kind == "commit":
                out.append(_outcome(lambda h=hold, a=step[2]: ledger.commit(h, a)))
            else:
                out.append(_outcome(lambda h=hold: ledger.release(h)))
        elif kind == "balance":
            out.append(_outcome(lambda s=step[1]: ledger.balance(s)))
    return out


def _close(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=setup, then=st.lists(calls, min_size=10, max_size=60))
def test_memory_answers_every_call_as_sqlite_does(first, then, tmp_path_factory):
    script = [*first, *then]
    sqlite = SQLiteLedger(tmp_path_factory.mktemp("ledger") / "ledger.db")
    try:
        expected = _play(sqlite, script)
    finally:
        sqlite.close()
    got = _play(MemoryLedger(), script)
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert _close(g, e), (k, script[k] if k < len(script) else None, g, e)


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
