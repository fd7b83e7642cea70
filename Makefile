# Every target bootstraps its own virtualenv from a clean clone: no manual step.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[collector,test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m examples.run

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff mypy
	$(VENV)/bin/ruff check audit_middleware collector tests examples benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) audit-data .pytest_cache
