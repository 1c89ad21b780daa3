# Two commands on a fresh machine: `make demo` and `make test`.
# Everything is installed into .venv from the hash-locked requirements/*.txt; nothing by hand.

# The newest supported Python found: on PATH, else a pyenv installation; PYTHON=... to choose.
SUPPORTED_PYTHONS := 3.13 3.12 3.11
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell pyenv=$$(command -v pyenv || echo "$${PYENV_ROOT:-$$HOME/.pyenv}/bin/pyenv"); \
	for v in $(SUPPORTED_PYTHONS); do \
	if python$$v -c '' 2>/dev/null; then echo python$$v; exit; fi; \
	p=$$("$$pyenv" prefix $$v 2>/dev/null) && [ -x "$$p/bin/python$$v" ] && { echo "$$p/bin/python$$v"; exit; }; \
	done; echo python3)
endif
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := setup.py pyproject.toml requirements/dev.txt \
	$(wildcard ext/clearing/core/*.pyx ext/clearing/core/*.pxd ext/clearing/core/*.pxi ext/clearing/core/*.h proto/clearing/v1/*.proto)
# Locks for every supported Python (universal markers, every wheel's hash).
LOCK := $(BIN)/uv pip compile --universal --python-version 3.11 --generate-hashes --quiet \
	--custom-compile-command "make lock"

.PHONY: install install-prod check-venv lock tools demo serve test lint format bench soak clean

# A .venv made by another Python (or whose Python is gone) would fail in confusing ways.
check-venv:
	@test -n "$(PYTHON_VERSION)" || { echo "no Python $(SUPPORTED_PYTHONS) found ($(PYTHON) does not run): install one or name it, make PYTHON=python3.11" >&2; exit 1; }
	@if [ -d $(VENV) ]; then \
		have=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
		if [ -z "$$have" ]; then \
			echo "$(VENV) is stale (its Python no longer runs): run 'rm -rf $(VENV)' and make again" >&2; exit 1; \
		elif [ "$$have" != "$(PYTHON_VERSION)" ]; then \
			echo "$(VENV) is Python $$have but make now uses $(PYTHON_VERSION) ($(PYTHON)): run 'rm -rf $(VENV)' and make again (or make PYTHON=python$$have to keep it)" >&2; exit 1; \
		fi; \
	fi

# Development: the locked dev set (production's, the tools, the build backend), then the
# package itself built against it (no build isolation: the build tools are hash-checked too).
$(STAMP): $(SOURCES) | check-venv
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

install: $(STAMP)

# Production (ops/RUNBOOK.md, "Install"): only the locked runtime set in .venv, and the
# package as a wheel built in a throwaway venv from the locked build tools.
install-prod: | check-venv
	@test ! -e $(STAMP) || { echo "$(VENV) holds the development install: run 'rm -rf $(VENV)' first" >&2; exit 1; }
	rm -rf build/wheel-venv build/dist
	$(PYTHON) -m venv build/wheel-venv
	build/wheel-venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/build.txt
	build/wheel-venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w build/dist .
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/prod.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall build/dist/clearing-*.whl
	$(BIN)/python -m pip check --disable-pip-version-check
	rm -rf build/wheel-venv

# After a change of pins in pyproject.toml: re-resolve the three locks (dev is the superset;
# prod and build are constrained to its versions).
lock: $(STAMP)
	@mkdir -p build
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' > build/build-requires.in
	$(LOCK) pyproject.toml build/build-requires.in --extra dev -o requirements/dev.txt
	$(LOCK) pyproject.toml -c requirements/dev.txt -o requirements/prod.txt
	$(LOCK) build/build-requires.in -c requirements/dev.txt -o requirements/build.txt

demo: $(STAMP)
	$(BIN)/clearing demo

serve: $(STAMP)
	$(BIN)/clearing serve

# Real tools the tests run: promtool checks ops/alerts.yml (Debian's prometheus package).
tools:
	@command -v promtool >/dev/null || { \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends prometheus >/dev/null; \
		else echo "promtool is not installed (apt-get install prometheus): its checks are skipped" >&2; fi; }

# Lint, types (mypy over the package; stubtest holds the compiled modules' .pyi to what
# they export), then the whole suite twice: on the compiled core, and on its Python twin
# (every server the tests start inherits CLEARING_CORE). The layer rules are a test.
test: $(STAMP) tools
	@$(BIN)/python -c 'import sys; print("Python", sys.version.split()[0])'
	$(BIN)/ruff check clearing loadgen benchmarks tests
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest --allowlist clearing/core/stubtest_allowlist.txt clearing.core._ledger clearing.core._summary
	$(BIN)/python -m pytest -q
	CLEARING_CORE=python $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check clearing loadgen benchmarks tests
	$(BIN)/mypy
	$(BIN)/ruff format --check clearing loadgen benchmarks tests

format: $(STAMP)
	$(BIN)/ruff format clearing loadgen benchmarks tests

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks -q --benchmark-only \
		--benchmark-columns=min,median,mean,rounds --benchmark-sort=name -s

# Crash safety and hostile input at full size (20 kills, every crash point, full
# storage, storms, fuzz, the access matrix, damaged journals): loopback only,
# a few minutes; prints one table and fails if anything was lost or doubled.
soak: $(STAMP)
	$(BIN)/python -m loadgen.soak

clean:
	rm -rf build $(VENV) clearing/core/*.so clearing/v1/*_pb2*.py clearing/v1/*_pb2*.pyi
