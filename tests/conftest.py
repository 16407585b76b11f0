from pathlib import Path

import pytest

# Scripts that tests run in other processes (the vLLM virtualenv), not test modules.
collect_ignore = ["integration/build_tiny_llama.py"]

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's development replay data (../shared/data); CI has it beside the clone."""
    if not (SHARED_DATA / "gsm8k.jsonl").exists():
        pytest.fail(f"development data missing: {SHARED_DATA.resolve()}")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES
