import asyncio
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from forecasts import fixed_forecasts
from pydantic import ValidationError

from roi_agents import (
    Budget,
    BudgetExceeded,
    BudgetSession,
    Controller,
    InvalidValueError,
    Option,
    Spend,
    Step,
)
from roi_agents.errors import (
    ReservationConflict,
    UnknownReservation,
    UnknownScope,
)
from roi_agents.ledger import Amount, Ledger, MemoryLedger, ScopeBudget

pytestmark = pytest.mark.integration

TABLE = {"fast": (0.6, 50, 75, 100), "deep": (0.9, 300, 450, 600)}

WORKER = Path(__file__).with_name("ledger_worker.py")


def _ledger(backend) -> Ledger:
    return backend[1]


def test_every_backend_is_a_ledger(backend):
    assert isinstance(_ledger(backend), Ledger)


def test_reserve_commit_release_and_balance(backend):
    ledger = _ledger(backend)
    ledger.set_budget(ScopeBudget(scope="acme", tokens=1000, usd=1.0, tool_calls=5))
    hold = ledger.reserve("acme", Amount(tokens=400, usd=0.25, tool_calls=2), ttl=60)
    assert hold.state == "held"
    assert hold.expires_at - hold.created_at == pytest.approx(60)
    balance = ledger.balance("acme")
    assert balance.reserved == Amount(tokens=400, usd=0.25, tool_calls=2)
    assert balance.remaining == {"tokens": 600, "usd": 0.75, "tool_calls": 3}
    committed = ledger.commit(hold, Amount(tokens=150, usd=0.1, tool_calls=1))
    assert committed.state == "committed"
    assert not committed.over_commit
    balance = ledger.balance("acme")
    assert balance.reserved == Amount()
    assert balance.committed == Amount(tokens=150, usd=0.1, tool_calls=1)
    assert balance.remaining["tokens"] == 850
    other = ledger.reserve("acme", Amount(tokens=850), ttl=60)
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve("acme", Amount(tokens=1), ttl=60)
    assert (info.value.resource, info.value.scope, info.value.limit, info.value.requested) == (
        "tokens",
        "acme",
        0,
        1,
    )
    assert ledger.release(other).state == "released"
    assert ledger.balance("acme").remaining["tokens"] == 850
    assert ledger.get(other.id).state == "released"


def test_hierarchy_every_level_must_fit(backend):
    ledger = _ledger(backend)
    ledger.set_budget(ScopeBudget(scope="acme", tokens=1000))
    ledger.set_budget(ScopeBudget(scope="acme/bob", tokens=800))
    ledger.set_budget(ScopeBudget(scope="acme/ann", tokens=800))
    ledger.set_budget(ScopeBudget(scope="acme/bob/t1", usd=2.0))  # tokens limited above only
    ledger.reserve("acme/bob/t1", Amount(tokens=700), ttl=60)
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve("acme/ann", Amount(tokens=400), ttl=60)
    assert info.value.scope == "acme"  # ann has room, the tenant does not
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve("acme/bob", Amount(tokens=150), ttl=60)
    assert info.value.scope == "acme/bob"
    assert ledger.balance("acme").reserved.tokens == 700
    assert ledger.balance("acme/bob/t1").remaining == {
        "tokens": 100,
        "usd": 2.0,
        "tool_calls": None,
    }
    assert ledger.balance("acme/bob/t1").as_budget() == Budget(tokens=100, usd=2.0)


@pytest.mark.parametrize("swept", [False, True])
def test_ttl_expiry_frees_the_hold_and_records_a_late_commit(backend, swept):
    ledger = _ledger(backend)
    ledger.set_budget(ScopeBudget(scope="t", tokens=100))
    hold = ledger.reserve("t", Amount(tokens=100), ttl=0.3)
    with pytest.raises(BudgetExceeded):
        ledger.reserve("t", Amount(tokens=1), ttl=60)
    time.sleep(0.4)
    assert ledger.get(hold.id).state == "expired"
    assert ledger.balance("t").remaining["tokens"] == 100
    if swept:  # a reserve sweeps the expired hold out of the counters first
        ledger.release(ledger.reserve("t", Amount(tokens=1), ttl=60))
    # The spend happened: recorded and flagged, never dropped.
    committed = ledger.commit(hold, Amount(tokens=10))
    assert (committed.state, committed.over_commit) == ("committed", True)
    balance = ledger.balance("t")
    assert balance.committed == Amount(tokens=10)
    assert balance.reserved == Amount()
    assert balance.remaining["tokens"] == 90
    assert balance.over_committed
    assert ledger.release(hold).state == "committed"  # nothing to free any more


def test_idempotent_reserve_commit_and_release(backend):
    ledger = _ledger(backend)
    ledger.set_budget(ScopeBudget(scope="t", tokens=100))
    first = ledger.reserve("t", Amount(tokens=60), ttl=60, idempotency_key="step-1")
    again = ledger.reserve("t", Amount(tokens=60), ttl=60, idempotency_key="step-1")
    assert again.id == first.id
    assert ledger.balance("t").reserved.tokens == 60
    done = ledger.commit(first, Amount(tokens=50))
    assert ledger.commit(first, Amount(tokens=50)) == done  # a retried commit changes nothing
    with pytest.raises(ReservationConflict):
        ledger.commit(first, Amount(tokens=55))
    assert ledger.balance("t").committed.tokens == 50
    assert ledger.release(first).state == "committed"
    assert ledger.balance("t").committed.tokens == 50
    released = ledger.reserve("t", Amount(tokens=10), ttl=60)
    ledger.release(released)
    assert ledger.release(released).state == "released"
    with pytest.raises(ReservationConflict):
        ledger.commit(released, Amount(tokens=1))


def test_over_commit_is_recorded_and_flagged(backend):
    ledger = _ledger(backend)
    ledger.set_budget(ScopeBudget(scope="t", tokens=100))
    hold = ledger.reserve("t", Amount(tokens=80), ttl=60)
    result = ledger.commit(hold, Amount(tokens=130))
    assert result.over_commit
    balance = ledger.balance("t")
    assert balance.committed.tokens == 130
    assert balance.remaining["tokens"] == -30
    assert balance.over_committed
    assert balance.as_budget() == Budget(tokens=0)
    with pytest.raises(BudgetExceeded):
        ledger.reserve("t", Amount(tokens=1), ttl=60)


def test_periods_count_only_this_period(backend):
    ledger = _ledger(backend)
    for scope, period in (("daily", "daily"), ("monthly", "monthly"), ("forever", None)):
        ledger.set_budget(ScopeBudget(scope=scope, tokens=100, period=period))
        hold = ledger.reserve(scope, Amount(tokens=70), ttl=60)
        ledger.commit(hold, Amount(tokens=70))
    # Move the periods' start 40 days into the past, as the ledger sees time: the commits
    # then belong to a period that has ended.
    if isinstance(ledger, MemoryLedger):
        clock = ledger.clock
        ledger.clock = lambda: clock() + 40 * 86400.0
    else:
        with ledger.transaction() as execute:
            execute(
                f"UPDATE {ledger.prefix}roi_budgets SET period_start = period_start - %s "
                "WHERE period IS NOT NULL",
                (40 * 86400.0,),
            )
    assert ledger.balance("daily").remaining["tokens"] == 100
    assert ledger.balance("monthly").remaining["tokens"] == 100
    assert ledger.balance("forever").remaining["tokens"] == 30
    # The next write starts the new period's counters; the old commits stay on record.
    ledger.commit(ledger.reserve("daily", Amount(tokens=20), ttl=60), Amount(tokens=20))
    assert ledger.balance("daily").committed.tokens == 20


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda led: led.reserve("nobody", Amount(tokens=1), ttl=60), UnknownScope),
        (lambda led: led.reserve("a//b", Amount(tokens=1), ttl=60), InvalidValueError),
        (lambda led: led.reserve("t", Amount(tokens=1), ttl=0), InvalidValueError),
        (lambda led: led.reserve("t", Amount(tokens=1), ttl=math.nan), InvalidValueError),
        (lambda led: led.reserve("t", Amount(tokens=-1), ttl=60), ValidationError),
        (lambda led: led.reserve("t", Amount(usd=math.nan), ttl=60), ValidationError),
        (lambda led: led.commit("no-such-id", Amount()), UnknownReservation),
        (lambda led: led.balance("nobody"), UnknownScope),
        (lambda led: led.set_budget(ScopeBudget(scope="x", tokens=-5)), ValidationError),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(backend, call, error):
    ledger = _ledger(backend)
    ledger.set_budget(ScopeBudget(scope="t", tokens=100))
    ledger.reserve("t", Amount(tokens=10), ttl=60)
    before = ledger.balance("t")
    with pytest.raises(error):
        call(ledger)
    assert ledger.balance("t") == before


async def test_async_calls(backend):
    ledger = _ledger(backend)
    ledger.set_budget(ScopeBudget(scope="t", tokens=100))
    holds = await asyncio.gather(
        *(ledger.areserve("t", Amount(tokens=30), ttl=60) for _ in range(5)), return_exceptions=True
    )
    granted = [h for h in holds if not isinstance(h, BaseException)]
    assert len(granted) == 3
    assert all(isinstance(h, BudgetExceeded) for h in holds if h not in granted)
    await ledger.acommit(granted[0], Amount(tokens=10))
    await ledger.arelease(granted[1])
    assert (await ledger.abalance("t")).remaining["tokens"] == 100 - 10 - 30


def _run_workers(url, schema, scope, processes, threads, ops):
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), url, schema, scope, str(threads), str(ops), str(seed)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in range(processes)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        results.extend(json.loads(out))
    return results


def test_64_workers_never_overspend(backend):
    from ledger_worker import hammer_threads

    name, ledger, url, schema = backend
    budget = 2000
    ledger.set_budget(ScopeBudget(scope="acme", tokens=budget * 2))
    ledger.set_budget(ScopeBudget(scope="acme/hot", tokens=budget, tool_calls=300))
    if name == "memory":  # one process: 64 threads
        results = hammer_threads(ledger, "acme/hot", 64, 15, seed=99)
    else:  # 32 threads here and 4 processes of 8 threads
        with_processes = _run_workers(url, schema, "acme/hot", 4, 8, 15)
        results = hammer_threads(ledger, "acme/hot", 32, 15, seed=99) + with_processes
    assert len(results) == 64
    ids = [i for r in results for i in r["ids"]]
    assert len(ids) == len(set(ids))
    assert sum(r["refused"] for r in results) > 0  # the budget was contended
    time.sleep(0.6)  # let the abandoned holds expire
    states = [ledger.get(i) for i in ids]
    assert {s.state for s in states} <= {"committed", "released", "expired"}
    spent = sum(s.actual.tokens for s in states if s.state == "committed")
    calls = sum(s.actual.tool_calls for s in states if s.state == "committed")
    assert spent <= budget
    assert calls <= 300
    balance = ledger.balance("acme/hot")
    assert balance.committed.tokens == spent
    assert balance.reserved == Amount()
    assert balance.remaining["tokens"] == budget - spent
    assert not balance.over_committed


def test_a_killed_worker_frees_its_holds_after_the_ttl(backend):
    name, ledger, url, schema = backend
    if name == "memory":
        pytest.skip("a memory ledger dies with its process")
    ledger.set_budget(ScopeBudget(scope="crash", tokens=1000))
    proc = subprocess.run(
        [sys.executable, str(WORKER), url, schema, "crash", "crash", "1.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -9  # SIGKILL
    ids = json.loads(proc.stdout)
    assert ledger.balance("crash").reserved.tokens == 300
    deadline = max(ledger.get(i).expires_at for i in ids)
    with ledger.transaction() as execute:
        (row,) = execute(f"SELECT {ledger.now_sql}", ())
    time.sleep(max(deadline - float(row[0]), 0) + 0.2)
    assert ledger.balance("crash").remaining["tokens"] == 1000
    assert {ledger.get(i).state for i in ids} == {"expired"}


def _steps(n):
    options = (Option(name="fast"), Option(name="deep"))
    return [Step(id=f"s{i}", options=options) for i in range(n)]


def test_controller_runs_share_one_scope_through_the_ledger(backend):
    import threading

    ledger = _ledger(backend)
    ledger.set_budget(ScopeBudget(scope="team", tokens=3000))
    ledger.set_budget(ScopeBudget(scope="team/a", tokens=2000))
    ledger.set_budget(ScopeBudget(scope="team/b", tokens=2000))
    spent = {"team/a": 0, "team/b": 0}

    def agent(scope):
        session = BudgetSession(ledger=ledger, scope=scope, controller=Controller(), ttl=60)
        pending = _steps(12)
        while pending:
            step = pending[0]
            decision = session.decide(pending, fixed_forecasts(pending, TABLE))
            if not decision.skipped:
                try:
                    with session.call(decision, step.option(decision.option)) as call:
                        # The step really spends its whole cap: the worst case.
                        call.charge(Spend(output_tokens=call.max_tokens))
                        spent[scope] += call.max_tokens
                except BudgetExceeded:
                    pass  # the other agent took what was left between plan and hold
            pending = pending[1:]

    workers = [threading.Thread(target=agent, args=(s,)) for s in spent]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sum(spent.values()) <= 3000
    assert all(v <= 2000 for v in spent.values())
    assert ledger.balance("team").committed.tokens == sum(spent.values())
    assert sum(spent.values()) > 2000  # both agents got work done


def test_expired_holds_stop_counting_everywhere_and_are_swept(backend):
    ledger = _ledger(backend)
    for scope in ("acme", "acme/a", "acme/b"):
        ledger.set_budget(ScopeBudget(scope=scope, tokens=100))
    lost = ledger.reserve("acme/a", Amount(tokens=60), ttl=0.3)
    time.sleep(0.4)
    other = ledger.reserve("acme/b", Amount(tokens=100), ttl=60)  # the tenant's 60 are free
    assert ledger.balance("acme").reserved.tokens == 100
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve("acme/a", Amount(tokens=10), ttl=60)
    assert info.value.scope == "acme"
    ledger.release(other)

    if not isinstance(ledger, MemoryLedger):  # the memory ledger takes it out as it looks
        with ledger.transaction() as execute:
            (stored,) = execute(
                f"SELECT state FROM {ledger.prefix}roi_reservations WHERE id = %s", (lost.id,)
            )
        # The reserve in acme/b saw it and could not take it out of acme/a's counters under
        # its own locks: it swept it after, in a transaction of its own.
        assert stored[0] == "expired"
    assert ledger.balance("acme/a").reserved.tokens == 0
    ledger.reserve("acme/a", Amount(tokens=10), ttl=60)
    assert ledger.balance("acme").reserved.tokens == 10
    assert ledger.balance("acme/a").reserved.tokens == 10
    assert ledger.get(lost.id).state == "expired"


@pytest.mark.parametrize(
    "scope", ["attacker\nvictim", "a/b\x00", "tenant/\ud800", "a/" + "x" * 600, "a\x7fb"]
)
def test_a_hostile_scope_name_is_refused_before_it_reaches_the_database(backend, scope):
    ledger = _ledger(backend)
    ledger.set_budget(ScopeBudget(scope="victim", tokens=1000))
    with pytest.raises(InvalidValueError, match="scope"):
        ledger.set_budget(ScopeBudget(scope=scope, tokens=1000))
    with pytest.raises(InvalidValueError, match="scope"):
        ledger.reserve(scope, Amount(tokens=900), ttl=60)
    balance = ledger.balance("victim")  # untouched, and still readable
    assert (balance.reserved, balance.committed) == (Amount(), Amount())


@pytest.mark.parametrize(
    "amount",
    [{"tokens": "5"}, {"tokens": True}, {"tokens": 10**20}, {"usd": 1e308}, {"usd": "0.5"}],
)
def test_amounts_are_exact_and_bounded(backend, amount):
    ledger = _ledger(backend)
    with pytest.raises(ValidationError):
        ledger.set_budget(ScopeBudget(scope="t", **amount))
    ledger.set_budget(ScopeBudget(scope="t", tokens=100))
    with pytest.raises(ValidationError):
        ledger.reserve("t", Amount(**amount), ttl=60)
    assert ledger.balance("t").remaining["tokens"] == 100


def test_sessions_key_their_calls_by_scope_so_a_reused_id_never_crosses(backend):
    """Two tenants' runs both named "1": each call is held and charged in its own scope."""
    ledger = _ledger(backend)
    for tenant in ("a", "b"):
        ledger.set_budget(ScopeBudget(scope=tenant, tokens=300))
    option = Option(name="o", max_tokens=100)
    for tenant in ("a", "b"):
        session = BudgetSession(ledger=ledger, scope=tenant)
        with session.call(None, option, prompt=10, call_id="1") as call:
            call.charge(Spend(input_tokens=10, output_tokens=100))
    assert ledger.balance("a").committed.tokens == ledger.balance("b").committed.tokens == 110


def test_idempotency_keys_are_per_scope_and_concurrent_duplicates_get_one_hold(backend):
    import threading

    ledger = _ledger(backend)
    for scope in ("a", "b"):
        ledger.set_budget(ScopeBudget(scope=scope, tokens=1000))
    first = ledger.reserve("a", Amount(tokens=100), ttl=60, idempotency_key="1")
    other = ledger.reserve("b", Amount(tokens=100), ttl=60, idempotency_key="1")
    assert other.id != first.id  # another tenant's "1" is another hold
    assert (first.idempotency_key, other.idempotency_key) == ("1", "1")
    ledger.commit(first, Amount(tokens=50))
    assert ledger.reserve("a", Amount(tokens=100), ttl=60, idempotency_key="1").id == first.id
    for round_ in range(20):
        got, errors = [], []

        def reserve(key=f"race-{round_}", got=got, errors=errors):
            try:
                got.append(ledger.reserve("b", Amount(tokens=1), ttl=60, idempotency_key=key).id)
            except Exception as error:  # any error is the failure under test
                errors.append(error)

        workers = [threading.Thread(target=reserve) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == []
        assert len(set(got)) == 1
    assert ledger.balance("b").reserved.tokens == 100 + 20
    with pytest.raises(InvalidValueError, match="idempotency_key"):
        ledger.reserve("a", Amount(tokens=1), ttl=60, idempotency_key="x\x00y")


def test_holds_abandoned_in_scopes_never_used_again_are_swept(backend):
    ledger = _ledger(backend)
    ledger.set_budget(ScopeBudget(scope="acme", tokens=10_000))
    ledger.set_budget(ScopeBudget(scope="acme/live", tokens=10_000))
    dead = []
    for i in range(30):
        ledger.set_budget(ScopeBudget(scope=f"acme/dead-{i}", tokens=100))
        dead.append(ledger.reserve(f"acme/dead-{i}", Amount(tokens=100), ttl=0.2))
    time.sleep(0.3)
    ledger.commit(ledger.reserve("acme/live", Amount(tokens=10), ttl=60), Amount(tokens=10))
    assert {ledger.get(h.id).state for h in dead} == {"expired"}
    assert ledger.balance("acme").reserved == Amount()
    assert all(ledger.balance(f"acme/dead-{i}").reserved == Amount() for i in range(30))
    assert ledger.sweep() == 0  # nothing left to sweep
    # A late commit of a swept hold is still recorded, once.
    ledger.commit(dead[0], Amount(tokens=40))
    assert ledger.balance("acme").committed.tokens == 50
    assert ledger.balance("acme/dead-0").reserved == Amount()


def test_a_malformed_postgres_url_is_refused_at_once():
    from conftest import POSTGRES_URL

    from roi_agents.ledger.postgres import PostgresLedger

    started = time.monotonic()
    with pytest.raises(InvalidValueError, match="url"):
        PostgresLedger(POSTGRES_URL + "?schema=x")
    assert time.monotonic() - started < 2


def test_kill_9_mid_reserve_or_commit_leaves_the_counters_equal_to_the_rows(backend):
    """A worker killed at a random moment of its reserves and commits: every transaction it
    finished is whole, none it did not is half-done (counters = the sums of the rows)."""
    import random
    import signal

    name, ledger, url, schema = backend
    if name == "memory":
        pytest.skip("a memory ledger dies with its process")
    ledger.set_budget(ScopeBudget(scope="fault", tokens=10**9))
    rng = random.Random(7)
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), url, schema, "fault", "forever", str(round_)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        with ledger.transaction() as execute:
            (rows,) = execute(
                "SELECT COALESCE(SUM(CASE WHEN state = 'committed' THEN actual_tokens END), 0), "
                "COALESCE(SUM(CASE WHEN state = 'held' THEN tokens END), 0), COUNT(*) "
                f"FROM {ledger.prefix}roi_reservations",
                (),
            )
            (counters,) = execute(
                f"SELECT committed_tokens, held_tokens FROM {ledger.prefix}roi_budgets "
                "WHERE scope = %s",
                ("fault",),
            )
        assert rows[2] > 0  # it got work done before it died
        assert (int(counters[0]), int(counters[1])) == (int(rows[0]), int(rows[1]))
    hold = ledger.reserve("fault", Amount(tokens=5), ttl=60)  # and the ledger goes on
    assert ledger.commit(hold, Amount(tokens=5)).state == "committed"


async def test_a_held_reservation_is_extended_and_only_a_held_one(backend):
    ledger = _ledger(backend)
    ledger.set_budget(ScopeBudget(scope="t", tokens=100))
    hold = ledger.reserve("t", Amount(tokens=60), ttl=0.3)
    extended = ledger.extend(hold, ttl=60)
    assert extended.expires_at > hold.expires_at + 30
    time.sleep(0.4)  # past the first TTL: still held, still counted
    assert ledger.get(hold.id).state == "held"
    assert ledger.balance("t").reserved.tokens == 60
    done = ledger.commit(hold, Amount(tokens=50))
    assert (done.state, done.over_commit) == ("committed", False)
    with pytest.raises(ReservationConflict, match="committed"):
        await ledger.aextend(hold, ttl=60)
    lapsed = ledger.reserve("t", Amount(tokens=10), ttl=0.2)
    time.sleep(0.3)
    with pytest.raises(ReservationConflict, match="expired"):
        ledger.extend(lapsed, ttl=60)
    with pytest.raises(InvalidValueError, match="ttl"):
        ledger.extend(hold.id, ttl=-1)
    assert ledger.balance("t").committed.tokens == 50


def test_holds_stored_by_an_earlier_release_are_read_and_brought_up_to_date(backend):
    """Levels were kept one per line; they are a JSON array now, and init rewrites old rows."""
    name, ledger, *_ = backend
    if name == "memory":
        pytest.skip("a memory ledger has no tables")
    for scope in ("acme", "acme/bob"):
        ledger.set_budget(ScopeBudget(scope=scope, tokens=1000))
    hold = ledger.reserve("acme/bob", Amount(tokens=100), ttl=60)

    def stored():
        with ledger.transaction() as execute:
            return execute(
                f"SELECT charged FROM {ledger.prefix}roi_reservations WHERE id = %s", (hold.id,)
            )[0][0]

    assert json.loads(stored()) == ["acme", "acme/bob"]
    with ledger.transaction() as execute:  # as an earlier release wrote it
        execute(
            f"UPDATE {ledger.prefix}roi_reservations SET charged = %s WHERE id = %s",
            ("acme\nacme/bob", hold.id),
        )
    ledger.commit(hold, Amount(tokens=40))  # read in its old form
    assert ledger.balance("acme").committed.tokens == ledger.balance("acme/bob").committed.tokens
    ledger.init_schema()
    assert json.loads(stored()) == ["acme", "acme/bob"]
    assert ledger.balance("acme").committed.tokens == 40
