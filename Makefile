# zguard: `make serve` to run on the demo model, `make test` to run the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch; on a GPU host: make install TORCH='torch==2.13.0 --index-url <your CUDA wheel index>'
TORCH  ?= torch==2.13.0

.PHONY: install serve test check format docs bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(BIN)/zguard serve

check: install
	$(BIN)/ruff format --check src tests bench tools
	$(BIN)/ruff check src tests bench tools
	$(BIN)/mypy

test: check
	$(BIN)/python -m pytest --cov --cov-report=term:skip-covered

format: install
	$(BIN)/ruff format src tests bench tools
	$(BIN)/ruff check --fix src tests bench tools

# Regenerate docs/openapi.json and docs/settings.md from the code (tests fail when they drift).
docs: install
	$(BIN)/python -m zguard.cli.docs

bench: install
	$(BIN)/python bench/bench_generation.py
	$(BIN)/python bench/bench_auth.py
	$(BIN)/python bench/bench_policy.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
