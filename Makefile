# Every target sets up .venv itself (Python 3.11, the package editable with its dev extra).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: set PYTHON=..." >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/roi-agents demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/controller_latency.py
	$(BIN)/python benchmarks/ledger_throughput.py
	$(BIN)/python benchmarks/telemetry_overhead.py
	$(BIN)/roi-agents bench --data ../shared/data/gsm8k.jsonl --budgets 0.1,0.25,0.5 \
		--json benchmarks/results/gsm8k.json --plot benchmarks/results/gsm8k.png

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
