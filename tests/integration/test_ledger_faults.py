"""PostgreSQL going away under the ledger: a private server, restarted and stopped mid-run.

The machine's own PostgreSQL is shared with other work, so these tests start one of their own
(``initdb`` into a temporary folder, run as the ``postgres`` user).
"""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from roi_agents import BudgetSession, Option, Spend
from roi_agents.errors import LedgerUnavailable
from roi_agents.ledger import Amount, ScopeBudget

pytestmark = pytest.mark.integration

BIN = Path("/usr/lib/postgresql/15/bin")


class PrivatePostgres:
    def __init__(self, folder: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.folder = folder
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._ctl("initdb", "-D", str(folder / "data"), "-A", "trust", "-U", "postgres", "-N")

    def _ctl(self, program: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(BIN / program), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def pg_ctl(self, action: str, *args: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        data, log = str(self.folder / "data"), str(self.folder / "log")
        self._ctl("pg_ctl", "-D", data, "-o", options, "-l", log, "-w", *args, action)


@pytest.fixture
def private_postgres():
    if os.geteuid() != 0 or not (BIN / "initdb").exists() or not shutil.which("runuser"):
        pytest.skip("needs root and PostgreSQL 15's initdb to run a private server")
    folder = Path(tempfile.mkdtemp(prefix="roi-pg-"))
    folder.chmod(0o755)
    shutil.chown(folder, "postgres")
    server = PrivatePostgres(folder)
    server.pg_ctl("start")
    try:
        yield server
    finally:
        server.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(folder, ignore_errors=True)


def test_a_restart_between_calls_is_not_seen_and_a_commit_waits_out_a_short_outage(
    private_postgres,
):
    from roi_agents.ledger.postgres import PostgresLedger

    # A connection is waited for 3 s at most: the outage below outlasts the pool's own wait.
    ledger = PostgresLedger(private_postgres.url, schema="faults", timeout=3.0)
    ledger.init_schema()
    ledger.set_budget(ScopeBudget(scope="t", tokens=10_000))
    session = BudgetSession(ledger=ledger, scope="t")
    option = Option(name="o", max_tokens=100)
    with session.call(None, option, prompt=10) as call:
        call.charge(Spend(input_tokens=10, output_tokens=50))

    # A restart between calls: the pool's stale connections are replaced before use.
    private_postgres.pg_ctl("restart", "-m", "fast")
    with session.call(None, option, prompt=10) as call:
        call.charge(Spend(input_tokens=10, output_tokens=40))
    assert ledger.balance("t").committed.tokens == 110

    # The database goes away after the call was sent: its commit is tried again until the
    # database is back (4 s here), and the spend is recorded once.
    with session.call(None, option, prompt=10) as call:
        private_postgres.pg_ctl("stop", "-m", "fast")
        threading.Timer(4.0, private_postgres.pg_ctl, args=("start",)).start()
        started = time.monotonic()
        call.charge(Spend(input_tokens=10, output_tokens=30))
    assert 4.0 < time.monotonic() - started < 20.0  # the pool reconnects with back-off
    balance = ledger.balance("t")
    assert (balance.committed.tokens, balance.reserved.tokens) == (150, 0)
    assert session.report().spent.tokens == 150

    # Down for longer than the retries: a one-line error that says so, and nothing half-done.
    private_postgres.pg_ctl("stop", "-m", "fast")
    with pytest.raises(LedgerUnavailable, match="PostgreSQL"):
        ledger.reserve("t", Amount(tokens=1), ttl=60)
    private_postgres.pg_ctl("start")
    # The pool reconnects with back-off after failed attempts: it is back within seconds.
    deadline = time.monotonic() + 30
    while True:
        try:
            balance = ledger.balance("t")
            break
        except LedgerUnavailable:
            assert time.monotonic() < deadline
    assert balance.committed.tokens == 150
    ledger.close()
