"""A ledger worker process for the concurrency and crash tests (run as a script).

python ledger_worker.py URL SCHEMA SCOPE THREADS OPS SEED   hammer, print the reservation ids
python ledger_worker.py URL SCHEMA SCOPE crash TTL          hold 3 reservations, then SIGKILL
python ledger_worker.py URL SCHEMA SCOPE forever SEED        hammer with 4 threads until killed
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading

from roi_agents.errors import BudgetExceeded
from roi_agents.ledger import Amount, Ledger, open_ledger


def hammer(ledger: Ledger, scope: str, ops: int, seed: int) -> dict[str, int | list[str]]:
    """Random reserves; each hold then committed (at most what it holds), released or left to
    expire. Returns the ids of every hold it made and how many reserves were refused."""
    rng = random.Random(seed)
    ids: list[str] = []
    refused = 0
    for _ in range(ops):
        amount = Amount(tokens=rng.randint(1, 60), tool_calls=rng.randint(0, 2))
        ttl = 0.5 if rng.random() < 0.15 else 30.0
        try:
            hold = ledger.reserve(scope, amount, ttl=ttl)
        except BudgetExceeded:
            refused += 1
            continue
        ids.append(hold.id)
        if ttl < 1:
            continue  # abandoned: must expire
        if rng.random() < 0.7:
            actual = Amount(tokens=rng.randint(0, amount.tokens), tool_calls=amount.tool_calls)
            ledger.commit(hold, actual)
        else:
            ledger.release(hold)
    return {"ids": ids, "refused": refused}


def hammer_threads(ledger: Ledger, scope: str, threads: int, ops: int, seed: int) -> list[dict]:
    results: list[dict] = [{} for _ in range(threads)]

    def work(k: int) -> None:
        results[k] = hammer(ledger, scope, ops, seed * 1000 + k)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


def main() -> None:
    url, schema, scope = sys.argv[1:4]
    ledger = open_ledger(url, schema=schema)
    if sys.argv[4] == "crash":
        ttl = float(sys.argv[5])
        ids = [ledger.reserve(scope, Amount(tokens=100), ttl=ttl).id for _ in range(3)]
        print(json.dumps(ids), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if sys.argv[4] == "forever":
        print("started", flush=True)
        hammer_threads(ledger, scope, 4, 10**9, int(sys.argv[5]))
    threads, ops, seed = (int(x) for x in sys.argv[4:7])
    print(json.dumps(hammer_threads(ledger, scope, threads, ops, seed)), flush=True)
    ledger.close()


if __name__ == "__main__":
    main()
