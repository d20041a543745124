# Everything a new machine needs is installed by these targets: a virtual environment in .venv with the pinned
# versions of constraints.txt (torch==2.13.0 is the CPU wheel; never loosen it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install  ## generate the embedded demo data and run conveyor on it
	$(BIN)/conveyor demo

test: install  ## the test suite (PostgreSQL cases skip, with the reason, where no server answers)
	$(BIN)/python -m pytest

lint: install  ## ruff and mypy
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

bench: install  ## speed claims, printed as tables of ratios
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf $(VENV) workspace .pytest_cache .mypy_cache .ruff_cache
