"""tokencap's ``wrap(client, limit=...)``, as its README shows it for an OpenAI client.

tokencap budgets tokens, so the scenario's budget is the ``limit`` as it stands. Before each
call it adds its estimate of the prompt to the session's count (refusing the call if that
would pass the limit), then adds what the reply used beyond the estimate; at 100% it blocks
every further call. Its estimate of the prompt comes from tiktoken when installed, which
needs the network to fetch its encoding (this machine has none, and a failed count is 0):
installed without the ``[openai]`` extra, it uses its documented fallback of four
characters a token. Its default SQLite backend (``tokencap.db`` in the working directory)
lives in a temporary folder. Workers are threads sharing the one wrapped client, whose
backend serialises the check-and-increment. A ``BudgetExceededError`` is a refused call.
"""

from __future__ import annotations

import os
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import tokencap
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scenarios import Outcome, arguments, openai_request, report, run_calls


def main() -> None:
    args = arguments()
    scenario = args.scenario
    request = openai_request(scenario)
    with tempfile.TemporaryDirectory(prefix="tokencap-") as folder:
        os.chdir(folder)  # where its default backend puts tokencap.db
        client = tokencap.wrap(
            OpenAI(base_url=args.base_url, api_key="-", max_retries=0, timeout=120),
            limit=scenario.budget,
            quiet=True,
        )

        def call() -> None:
            client.chat.completions.create(**request)

        sent, refused = run_calls(scenario, call, tokencap.BudgetExceededError)
        used = client.get_status().dimensions["session"].used
        tokencap.teardown()
        os.chdir(Path(__file__).resolve().parent)
    report(
        Outcome(
            library=f"tokencap {version('tokencap')}",
            entry="wrap(OpenAI(), limit=budget)",
            sent=sent,
            refused=refused,
            reported=int(used),
            note="tokens as its limit; prompt estimated at 4 chars/token (no tiktoken offline)",
        )
    )


if __name__ == "__main__":
    main()
