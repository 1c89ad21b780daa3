# Two commands on a fresh machine: `make demo` and `make test`.
# Everything is installed into .venv from pinned versions; nothing by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := setup.py pyproject.toml $(wildcard ext/clearing/*.pyx ext/clearing/*.pxd proto/clearing/v1/*.proto)

.PHONY: install demo serve test lint format bench soak clean

$(STAMP): $(SOURCES)
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/clearing demo

serve: $(STAMP)
	$(BIN)/clearing serve

test: $(STAMP)
	$(BIN)/ruff check clearing loadgen benchmarks tests
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check clearing loadgen benchmarks tests
	$(BIN)/ruff format --check clearing loadgen benchmarks tests

format: $(STAMP)
	$(BIN)/ruff format clearing loadgen benchmarks tests

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks -q -p no:randomly --benchmark-only \
		--benchmark-columns=min,median,mean,rounds --benchmark-sort=name -s

# Crash safety and hostile input at full size (20 kills, every crash point, full
# storage, storms, fuzz, the access matrix, damaged journals): loopback only,
# a few minutes; prints one table and fails if anything was lost or doubled.
soak: $(STAMP)
	$(BIN)/python -m loadgen.soak

clean:
	rm -rf build $(VENV) clearing/_core.c clearing/*.so clearing/v1/*_pb2*.py clearing/v1/*_pb2*.pyi
