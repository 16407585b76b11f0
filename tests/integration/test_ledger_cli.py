import json
import uuid

import pytest

from roi_agents.cli import main
from roi_agents.ledger.postgres import PostgresLedger

pytestmark = pytest.mark.integration


def _urls(tmp_path):
    from conftest import POSTGRES_URL

    return [f"sqlite:///{tmp_path / 'cli.db'}", POSTGRES_URL]


def test_ledger_init_budget_balance(tmp_path, capsys):
    schema = f"roi_cli_{uuid.uuid4().hex[:8]}"
    for url in _urls(tmp_path):
        try:
            assert main(["ledger", "init", "--url", url, "--schema", schema]) == 0
            assert main(["ledger", "init", "--url", url, "--schema", schema]) == 0  # repeatable
            assert (
                main(
                    [
                        "ledger",
                        "budget",
                        "--url",
                        url,
                        "--schema",
                        schema,
                        "--scope",
                        "acme",
                        "--tokens",
                        "5000",
                        "--period",
                        "daily",
                    ]
                )
                == 0
            )
            capsys.readouterr()
            assert (
                main(["ledger", "balance", "--url", url, "--schema", schema, "--scope", "acme"])
                == 0
            )
            balance = json.loads(capsys.readouterr().out)
            assert balance["remaining"]["tokens"] == 5000
            assert balance["budget"]["period"] == "daily"
            assert (
                main(["ledger", "balance", "--url", url, "--schema", schema, "--scope", "nobody"])
                == 2
            )
            assert "no budget set for scope 'nobody'" in capsys.readouterr().out
        finally:
            if url.startswith("postgresql"):
                ledger = PostgresLedger(url, schema=schema)
                ledger.drop_schema()
                ledger.close()


def test_unknown_ledger_url(capsys):
    assert main(["ledger", "init", "--url", "mysql://x"]) == 2
    assert "expected memory:" in capsys.readouterr().out
