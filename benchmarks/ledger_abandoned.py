"""Reserve + commit latency after K holds were abandoned in scopes never used again.

Run: ``.venv/bin/python benchmarks/ledger_abandoned.py [--k 0,1000,10000,50000] [--postgres URL]``.

For each K: a fresh ledger, K holds spread over 100 dead scopes under ``acme`` (the workers that
made them died), all expired at once, then reserve + commit in a live sibling scope, ``--repeat``
times. Prints the median and p99 in milliseconds (the first call,
which sweeps, is reported apart) and the ratio of each median to K = 0's, measured in this run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from roi_agents.ledger import Amount, Ledger, ScopeBudget, SQLiteLedger


def _ledger(kind: str, url: str | None) -> Ledger:
    if kind == "sqlite":
        return SQLiteLedger(Path(tempfile.mkdtemp()) / "ledger.db")
    from roi_agents.ledger.postgres import PostgresLedger

    ledger = PostgresLedger(url or "", schema=f"roi_bench_{uuid.uuid4().hex[:8]}")
    ledger.init_schema()
    return ledger


def measure(kind: str, url: str | None, k: int, repeat: int) -> tuple[float, float, float]:
    ledger = _ledger(kind, url)
    try:
        ledger.set_budget(ScopeBudget(scope="acme", tokens=10**12))
        ledger.set_budget(ScopeBudget(scope="acme/live", tokens=10**12))
        for d in range(100):
            ledger.set_budget(ScopeBudget(scope=f"acme/dead-{d}", tokens=10**12))
        for i in range(k):
            ledger.reserve(f"acme/dead-{i % 100}", Amount(tokens=1), ttl=3600)
        # The workers died an hour ago: their holds expire now, all at once (the ledger's own
        # table, moved as the database sees time; a TTL shorter than the set-up would let the
        # set-up's reserves sweep some of them).
        with ledger.transaction() as execute:  # type: ignore[attr-defined]
            execute(
                f"UPDATE {ledger.prefix}roi_reservations SET expires_at = expires_at - 7200",  # type: ignore[attr-defined]
                (),
            )
        times = []
        for _ in range(repeat + 1):
            start = time.perf_counter()
            hold = ledger.reserve("acme/live", Amount(tokens=10), ttl=60)
            ledger.commit(hold, Amount(tokens=5))
            times.append(time.perf_counter() - start)
        first, rest = times[0] * 1e3, sorted(t * 1e3 for t in times[1:])
        return first, statistics.median(rest), rest[int(0.99 * (len(rest) - 1))]
    finally:
        if kind == "postgres":
            ledger.drop_schema()  # type: ignore[attr-defined]
        ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="0,1000,10000,50000")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--postgres", help="a PostgreSQL URL to measure too")
    args = parser.parse_args()
    kinds = ["sqlite"] + (["postgres"] if args.postgres else [])
    for kind in kinds:
        base = None
        for k in (int(x) for x in args.k.split(",")):
            first, p50, p99 = measure(kind, args.postgres, k, args.repeat)
            base = base or p50
            print(
                f"{kind:<8} K={k:>6}: first {first:8.2f} ms (sweeps), then p50 {p50:6.2f} ms, "
                f"p99 {p99:6.2f} ms, p50 / K=0's {p50 / base:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
