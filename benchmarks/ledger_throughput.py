"""Reservations per second (reserve + commit) on SQLite and PostgreSQL, 1 / 8 / 64 workers.

Run: ``.venv/bin/python benchmarks/ledger_throughput.py [--seconds S] [--postgres URL]``. Each
worker is a thread that reserves a random amount in one shared scope and commits part of it, as
fast as it can, for ``--seconds``. Reports completed reserve+commit pairs per second, the p50 and
p99 latency of a pair, and the overspend check (committed <= budget), all measured in this one
run. (Contended budgets, where reserves are refused, are exercised by the concurrency tests.)
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from roi_agents.errors import BudgetExceeded
from roi_agents.ledger import Amount, Ledger, ScopeBudget, SQLiteLedger


def run(ledger: Ledger, workers: int, seconds: float, budget: int) -> dict[str, float]:
    scope = f"bench/{uuid.uuid4().hex[:8]}"
    ledger.set_budget(ScopeBudget(scope="bench", tokens=None))
    ledger.set_budget(ScopeBudget(scope=scope, tokens=budget))
    latencies: list[list[float]] = [[] for _ in range(workers)]
    refused = [0] * workers
    stop = time.perf_counter() + seconds

    def work(k: int) -> None:
        rng = random.Random(k)
        while time.perf_counter() < stop:
            amount = Amount(tokens=rng.randint(1, 50))
            started = time.perf_counter()
            try:
                hold = ledger.reserve(scope, amount, ttl=60)
            except BudgetExceeded:
                refused[k] += 1
                continue
            ledger.commit(hold, Amount(tokens=rng.randint(0, amount.tokens)))
            latencies[k].append(time.perf_counter() - started)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    ms = np.array([x for per in latencies for x in per]) * 1e3
    committed = ledger.balance(scope).committed.tokens
    return {
        "workers": workers,
        "pairs_per_s": len(ms) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "refused": sum(refused),
        "committed": committed,
        "budget": budget,
        "overspend": max(committed - budget, 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        backends: list[tuple[str, Ledger]] = [("sqlite", SQLiteLedger(Path(folder) / "b.db"))]
        if args.postgres:
            from roi_agents.ledger.postgres import PostgresLedger

            pg = PostgresLedger(
                args.postgres, schema=f"roi_bench_{uuid.uuid4().hex[:8]}", max_size=64
            )
            pg.init_schema()
            backends.append(("postgres", pg))
        try:
            for name, ledger in backends:
                for workers in (1, 8, 64):
                    row = run(ledger, workers, args.seconds, budget=10**9)
                    rows.append({"backend": name, **row})
        finally:
            for name, ledger in backends:
                if name == "postgres":
                    ledger.drop_schema()  # type: ignore[attr-defined]
                ledger.close()
    table = Table(title=f"ledger reserve+commit, {args.seconds:g} s per cell, threads")
    for column in (
        "backend",
        "workers",
        "pairs/s",
        "p50 ms",
        "p99 ms",
        "refused",
        "committed / budget",
        "overspend",
    ):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["backend"],
            str(r["workers"]),
            f"{r['pairs_per_s']:.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            str(r["refused"]),
            f"{r['committed']} / {r['budget']}",
            str(r["overspend"]),
        )
    Console().print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
