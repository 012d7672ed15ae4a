PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU wheel that lies on this machine's disk; the project's range accepts it.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "sweeps>=0.2"
	touch $(STAMP)

demo: setup
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/kd-gym demo

test: setup
	WANDB_MODE=offline WANDB_SILENT=true $(BIN)/python -m pytest -q

test-fast: setup
	WANDB_MODE=offline WANDB_SILENT=true $(BIN)/python -m pytest -q -m "not integration"

lint: setup
	$(BIN)/ruff check kd_gym agents tests scripts

clean:
	rm -rf runs .pytest_cache .ruff_cache
