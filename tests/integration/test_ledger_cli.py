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
            # repeatable; `migrate` is its other name (brings earlier tables up to date)
            assert main(["ledger", "migrate", "--url", url, "--schema", schema]) == 0
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


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--tokens", "-5"], "tokens"),
        (["--usd", "nan"], "usd"),
        (["--tokens", str(10**20)], "tokens"),
        (["--scope", "a\nb", "--tokens", "5"], "scope"),
    ],
)
def test_bad_ledger_flags_are_one_line_errors(tmp_path, capsys, flags, says):
    args = ["ledger", "budget", "--url", f"sqlite:///{tmp_path / 'cli.db'}", "--scope", "acme"]
    assert main([*args, *flags]) == 2
    out = capsys.readouterr().out
    assert out.startswith("error:")
    assert says in out
    assert "Traceback" not in out


def test_ledger_commands_on_a_missing_or_unreachable_postgres_say_so(capsys):
    import socket
    import time

    from conftest import POSTGRES_URL

    schema = f"roi_cli_{uuid.uuid4().hex[:8]}"  # never initialised
    assert (
        main(["ledger", "balance", "--url", POSTGRES_URL, "--schema", schema, "--scope", "a"]) == 2
    )
    assert "roi-agents ledger init" in capsys.readouterr().out
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    url = f"postgresql://postgres@127.0.0.1:{port}/test"
    assert main(["ledger", "balance", "--url", url, "--scope", "a"]) == 2
    assert "cannot reach PostgreSQL" in capsys.readouterr().out
    assert time.monotonic() - started < 20
    for schema in ("x" * 64, "pg_catalog"):
        assert main(["ledger", "init", "--url", POSTGRES_URL, "--schema", schema]) == 2
        assert "schema" in capsys.readouterr().out
