# Two commands for a fresh machine:
#   make run    set everything up and answer a prompt through the router (fetches the starter weights)
#   make test   set everything up, fetch the starter weights, run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= write a python function that reverses a string
STARTER_MODEL ?= qwen2.5-coder-0.5b-instruct
PYTEST_ARGS ?=

.PHONY: install run test weights serve

# The marker file makes `make` reinstall only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/route "$(PROMPT)"

weights: install
	$(BIN)/route models pull $(STARTER_MODEL)

# pytest's own exit status fails the target, 5 (no tests collected) included.
test: weights
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

serve: install
	$(BIN)/route serve
