# Every target bootstraps its own virtualenv from a clean clone: no manual step.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-pythons bench lint clean faults

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[collector,test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m examples.run

test: $(STAMP)
	$(PY) -m pytest

# The fast test directories under every Python >= 3.11 found (CI runs 3.11 only): each
# `python3.N` on PATH that runs, else pyenv's 3.N; PYTHONS=/path/python3.N ... to choose.
# Each gets a virtualenv of its own, .venv-3.N. Not part of `make test` (CI time).
FAST_TESTS ?= tests/app tests/formats tests/otel tests/shipping tests/cli tests/api \
	tests/shipper tests/collector tests/integrity tests/packaging
test-pythons:
	@pythons="$(PYTHONS)"; \
	if [ -z "$$pythons" ]; then \
		for minor in 11 12 13 14 15; do \
			found=$$(command -v python3.$$minor) && python3.$$minor -c '' 2>/dev/null \
			|| found=$$(ls -d "$$(pyenv root 2>/dev/null)"/versions/3.$$minor.*/bin/python3.$$minor 2>/dev/null | tail -n 1); \
			[ -n "$$found" ] && pythons="$$pythons $$found"; \
		done; \
	fi; \
	[ -n "$$pythons" ] || { echo "test-pythons: no python3.11 or later found"; exit 2; }; \
	failed=""; \
	for python in $$pythons; do \
		version=$$($$python -c 'import sys; print("%d.%d" % sys.version_info[:2])') || exit 2; \
		venv=.venv-$$version; \
		echo "== Python $$version ($$python)"; \
		if [ ! -e $$venv/.installed ] || [ pyproject.toml -nt $$venv/.installed ]; then \
			$$python -m venv $$venv && $$venv/bin/python -m pip install --quiet -e '.[collector,test]' \
			&& touch $$venv/.installed || exit 2; \
		fi; \
		$$venv/bin/python -m pytest -q -p no:cacheprovider $(FAST_TESTS) || failed="$$failed $$version"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-pythons: failed on$$failed"; exit 1; fi

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
	rm -rf $(VENV) .venv-3.* audit-data .pytest_cache
