"""floe-guard's ``BudgetGuard``, the two ways its documentation shows for an OpenAI client.

floe-guard budgets dollars and fails closed on a model it cannot price, so "tiny" gets a
``price_overrides`` entry at a stated list price: $1 per million tokens, input and output
alike (one price, so dollars and tokens convert exactly).

``--entry guarded_completion``: its OpenAI adapter (README), ``guarded_completion(guard,
client, ...)``, which reserves the last call's cost before each call and settles the real
usage after. ``--entry reserve``: the request-sized path of docs/advanced.md,
``guard.reserve(guard.estimate_call(model, prompt_tokens, max_tokens), estimated_tokens=...)``
then ``guard.settle(...)``, with its ``token_limit`` set to the token budget as well; the
prompt's tokens are estimated at 4 characters a token (the heuristic floe-guard itself uses
for streams; it has no tokenizer for "tiny"). Workers are threads sharing one guard, which
its documentation calls thread-safe ("the guard can back a parallel crew"). A
``BudgetExceeded`` is a refused call.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

from floe_guard import BudgetExceeded, BudgetGuard, ManualPrice
from floe_guard.integrations.openai import guarded_completion
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scenarios import (
    MODEL,
    USD_PER_TOKEN,
    Outcome,
    arguments,
    openai_request,
    report,
    run_calls,
)


def main() -> None:
    args = arguments()
    scenario = args.scenario
    entry = args.entry or "guarded_completion"
    client = OpenAI(base_url=args.base_url, api_key="-", max_retries=0, timeout=120)
    request = openai_request(scenario)
    limit_usd = scenario.budget * USD_PER_TOKEN
    prices = {MODEL: ManualPrice(USD_PER_TOKEN, USD_PER_TOKEN)}
    if entry == "guarded_completion":
        guard = BudgetGuard(limit_usd=limit_usd, price_overrides=prices)
        shown = "guarded_completion(BudgetGuard(limit_usd))"
        note = "$1/M tokens via price_overrides; reserves the last call's cost (0 at first)"

        def call() -> None:
            guarded_completion(guard, client, **request)

    elif entry == "reserve":
        guard = BudgetGuard(
            limit_usd=limit_usd, token_limit=scenario.budget, price_overrides=prices
        )
        shown = "reserve(estimate_call), token_limit"
        note = (
            "$1/M tokens via price_overrides; reserves prompt (chars / 4) + max_tokens "
            "before each call"
        )
        text = json.dumps(request["messages"] + request.get("tools", []))
        prompt_tokens = len(text) // 4
        expected = prompt_tokens + scenario.max_tokens

        def call() -> None:
            estimate = guard.estimate_call(
                MODEL, prompt_tokens, max_completion_tokens=scenario.max_tokens
            )
            handle = guard.reserve(estimate, estimated_tokens=expected)
            try:
                reply = client.chat.completions.create(**request)
            except BaseException:
                guard.release(handle)
                raise
            usage = reply.usage
            guard.settle(MODEL, usage.prompt_tokens, usage.completion_tokens, reserved=handle)

    else:
        raise SystemExit(f"unknown entry {entry!r}: guarded_completion or reserve")

    sent, refused = run_calls(scenario, call, BudgetExceeded)
    report(
        Outcome(
            library=f"floe-guard {version('floe-guard')}",
            entry=shown,
            sent=sent,
            refused=refused,
            reported=round(guard.spent_usd / USD_PER_TOKEN),
            note=note,
        )
    )


if __name__ == "__main__":
    main()
