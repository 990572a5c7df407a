# Every target creates the virtual environment on first use, so a fresh clone needs
# nothing but Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m connector.demo

test: $(STAMP)
	$(BIN)/python -m pytest

# Starts the emulators on 127.0.0.1, runs every benchmark and writes bench/results/.
# The full profile takes about 45 minutes on 2 cores; bench-quick takes a few.
bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache
