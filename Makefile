# `make demo` and `make test` set up .venv (pinned by constraints.txt: torch 2.13.0 is the CPU wheel here).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINTED := src tests benchmarks

.PHONY: venv test lint format demo bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check $(LINTED)

# pytest exits 5 when it collects no test; that is not a failure of the suite.
test: lint
	$(BIN)/pytest -q -ra || [ $$? -eq 5 ]

format: $(STAMP)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

demo: $(STAMP)
	$(BIN)/nad demo --out runs/demo --overwrite

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
