# `make test` and `make demo` work on a fresh machine with only Python 3.11+:
# they create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench overhead lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check picker bench tests
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(PY) -m bench.demo

overhead: $(STAMP)
	$(PY) -m bench.overhead

bench: $(STAMP)
	$(PY) -m bench.compare --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
