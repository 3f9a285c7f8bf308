# Two commands for a fresh machine: `make run` (set up + answer a prompt), `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROMPT ?= write a python function that reverses a string

.PHONY: install run test weights

$(BIN)/route: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(BIN)/route

install: $(BIN)/route

run: install
	$(BIN)/route "$(PROMPT)"

test: install
	$(BIN)/python -m pytest -ra
