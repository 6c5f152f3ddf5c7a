# Set-up and everyday commands. `make demo` and `make test` work on a fresh clone (they create .venv first).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,logging,wandb,heif]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## the main job: generate the shapes data, train, evaluate (see README)
	$(BIN)/sparse-detector quickstart

test: $(STAMP)  ## the full test suite (CPU; tests needing ../shared skip when it is absent)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks
