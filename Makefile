# Everything a new machine needs is installed by these targets: a virtual environment in .venv with the pinned
# versions of constraints.txt (torch==2.13.0 is the CPU wheel; never loosen it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install  ## the whole line on generated data, ending by itself (`conveyor demo` alone ends by serving)
	$(BIN)/conveyor demo --no-serve

browser:  ## Debian's Chromium and ChromeDriver for the browser test (needs root; without them that test skips)
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } \
		|| echo "Chromium could not be installed: the browser test will skip"

test: install browser  ## the test suite (PostgreSQL and browser cases skip, with the reason, where unavailable)
	$(BIN)/python -m pytest

lint: install  ## ruff, mypy, and the import layering contract (pyproject's [tool.importlinter])
	$(BIN)/ruff check src tests benchmarks deploy
	$(BIN)/ruff format --check src tests benchmarks deploy
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install  ## speed and quality claims, printed as tables of ratios
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/extractor_value.py
	$(BIN)/python benchmarks/cnn.py
	$(BIN)/python benchmarks/quality.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/grouped_split.py
	$(BIN)/python benchmarks/selection.py
	$(BIN)/python benchmarks/segmentation.py
	$(BIN)/python benchmarks/conformal.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/hardening.py

clean:
	rm -rf $(VENV) workspace .pytest_cache .mypy_cache .ruff_cache
