# Every target bootstraps its own virtualenv from a clean clone: no manual step.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint clean faults

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[collector,test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m examples.run

test: $(STAMP)
	$(PY) -m pytest

# The fault-injection suite's long run (docs/reliability.md): 60 collector kills, 30 s
# SIGSTOP, >= 100,000 fuzzed frames and HTTP requests... (`make test` runs it shortened).
# Each result is printed as a FAULT line; FAULTS_REPORT=path also keeps them as JSON lines.
faults: $(STAMP)
	FAULTS_FULL=1 $(PY) -m pytest -s tests/faults tests/security

# query_speed compares the index with rg and jq (Debian: ripgrep, jq), and
# capture_instructions counts with valgrind: installed when missing, if we are root;
# otherwise the benchmark names what to install.
bench: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && ! { command -v rg && command -v jq && command -v valgrind; } >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq ripgrep jq valgrind \
		|| echo "bench: could not install ripgrep, jq and valgrind; query_speed and capture_instructions will fail"; \
	fi
	$(PY) -m benchmarks

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff mypy
	$(VENV)/bin/ruff check audit_middleware collector tests examples benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) audit-data .pytest_cache
