"""baar-core's ``BaarCallbackHandler``: its kill-switch on a LangChain ``ChatOpenAI``.

The README's "Pattern 1": ``BAARRouter(budget=...)`` holds the budget (dollars) and
``ChatOpenAI(..., callbacks=[BaarCallbackHandler(router)])`` checks it before each call. The
token budget becomes dollars at a stated list price, registered for "tiny" with
``litellm.register_model()`` as its warnings advise: $1 per million tokens, input and output
alike (one price, so dollars and tokens convert exactly). Before each call the handler
reserves the prompt's tokens (litellm's counter) plus 500 completion tokens, its fixed
estimate, and refuses the call when that would pass the budget; after the reply it settles
the real usage. Tools are bound with ``bind_tools`` as OpenAI function schemas. Workers are
threads sharing the one model and handler (its reservations are atomic and keyed per run).
A ``BudgetExhausted`` is a refused call.
"""

from __future__ import annotations

import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import litellm
from baar import BAARRouter, BudgetExhausted
from baar.integrations.langchain import BaarCallbackHandler
from langchain_openai import ChatOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scenarios import (
    MODEL,
    PROMPT,
    USD_PER_TOKEN,
    Outcome,
    arguments,
    chat_settings,
    openai_tools,
    report,
    run_calls,
)


def main() -> None:
    args = arguments()
    scenario = args.scenario
    warnings.simplefilter("ignore")  # litellm's notes on prices it has no cache rates for
    litellm.register_model(
        {
            MODEL: {
                "input_cost_per_token": USD_PER_TOKEN,
                "output_cost_per_token": USD_PER_TOKEN,
                "litellm_provider": "openai",
                "mode": "chat",
            }
        }
    )
    router = BAARRouter(budget=scenario.budget * USD_PER_TOKEN)
    chat = ChatOpenAI(
        **chat_settings(args.base_url),
        max_tokens=scenario.max_tokens,
        callbacks=[BaarCallbackHandler(router)],
    )
    model = chat
    if scenario.tools:
        model = chat.bind_tools(openai_tools())
    sent, refused = run_calls(scenario, lambda: model.invoke(PROMPT), BudgetExhausted)
    report(
        Outcome(
            library=f"baar-core {version('baar-core')}",
            entry="ChatOpenAI(callbacks=[BaarCallbackHandler])",
            sent=sent,
            refused=refused,
            reported=round(router.spent / USD_PER_TOKEN),
            note="$1/M tokens via litellm.register_model; reserves prompt + 500 tokens "
            "before each call",
        )
    )


if __name__ == "__main__":
    main()
