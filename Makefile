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

# query_speed compares the index with rg and jq (Debian: ripgrep, jq): installed when
# missing, if we are root; otherwise the benchmark names what to install.
bench: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && ! { command -v rg && command -v jq; } >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq ripgrep jq \
		|| echo "bench: could not install ripgrep and jq; query_speed will fail"; \
	fi
	$(PY) -m benchmarks

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff mypy
	$(VENV)/bin/ruff check audit_middleware collector tests examples benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) audit-data .pytest_cache
