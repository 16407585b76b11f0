"""shekel's ``with budget(max_usd=...)``, as its README and OpenAI guide show it.

shekel budgets dollars, so the token budget becomes dollars at a stated list price, given for
the model "tiny" with ``price_per_1k_tokens``: $1 per million tokens, input and output alike
(one price, so dollars and tokens convert exactly). The calls run inside one ``with budget``
block, its documented batch pattern: shekel checks the spend after each reply and raises
``BudgetExceededError`` from the call that crossed the cap (that call was sent), which ends
the block; the calls it never reached are the refused ones.

shekel keeps the active budget per thread and asyncio task (a ContextVar) and documents one
budget per thread or task ("not thread-safe if shared across threads"); a budget shared by
workers needs its Redis backend. The concurrency scenario is reported as not expressible.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

from openai import OpenAI
from shekel import BudgetExceededError, budget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scenarios import USD_PER_TOKEN, Outcome, arguments, openai_request, report


def main() -> None:
    args = arguments()
    scenario = args.scenario
    max_usd = scenario.budget * USD_PER_TOKEN
    entry = "budget(max_usd, price_per_1k_tokens)"
    library = f"shekel {version('shekel')}"
    if scenario.workers > 1:
        report(
            Outcome(
                library=library,
                entry=entry,
                sent=0,
                refused=0,
                reported=None,
                note="cannot express: shekel documents one budget per thread/task (a "
                "ContextVar; 'not thread-safe if shared across threads'), a shared one "
                "only through its Redis backend",
            )
        )
        return
    client = OpenAI(base_url=args.base_url, api_key="-", max_retries=0, timeout=120)
    request = openai_request(scenario)
    price = USD_PER_TOKEN * 1000
    guard = budget(max_usd=max_usd, price_per_1k_tokens={"input": price, "output": price})
    sent = 0
    try:
        with guard:
            for _ in range(scenario.calls):
                sent += 1  # raised after its reply, the crossing call was sent too
                client.chat.completions.create(**request)
    except BudgetExceededError:
        pass
    report(
        Outcome(
            library=library,
            entry=entry,
            sent=sent,
            refused=scenario.calls - sent,
            reported=round(guard.spent / USD_PER_TOKEN),
            note="$1/M tokens (in and out) via price_per_1k_tokens; checked after each reply, "
            "BudgetExceededError ends the with-block, the calls not reached count as refused",
        )
    )


if __name__ == "__main__":
    main()
