# The documented commands. `make test` and `make demo` build .venv themselves when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo serve test lint typecheck pytest bench bench-hot bench-size bench-group bench-gateway clean fuzz client image-test

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e ".[postgres,redis]" --group dev
	touch $(STAMP)

# A short tour of the Python library on SQLite, without the HTTP service.
demo: install
	$(BIN)/python -m tokenquota.demo

# The HTTP service on SQLite in the working directory; TOKENQUOTA_* or --config for the rest.
serve: install
	$(BIN)/tokenquota serve

# lint-imports: the layer contracts in pyproject.toml ([tool.importlinter]).
lint: install
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/python scripts/gen_sync_client.py --check
	$(BIN)/lint-imports

# The blocking client is generated from the async one; edit _async.py, then run this.
client: install
	$(BIN)/python scripts/gen_sync_client.py

typecheck: install
	$(BIN)/mypy

# Two processes (pytest-xdist): the machines this runs on have two cores, and most
# tests wait on a store, a socket or a child process. PYTEST_WORKERS=0 runs one
# process; PYTEST_ARGS adds options (.ci/run asks for the slowest tests' durations).
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=
pytest: install
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache

# Hostile input against every write route, on SQLite and PostgreSQL, with many more
# examples than `make test` runs (FUZZ_EXAMPLES per route; slow).
FUZZ_EXAMPLES ?= 500
fuzz: install
	TOKENQUOTA_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest tests/api/test_hostile_input.py -p no:cacheprovider

# One table: every backend in-process and over HTTP (2 workers, 64 connections) against
# floors measured in the same run; JSON in bench/out/latest.json (bench/README.md).
# BENCH_ARGS passes options on, e.g. BENCH_ARGS="--only sqlite,postgres". Then what
# gateway mode adds to a model call (bench-gateway, about 30 s).
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m bench.bench_consume $(BENCH_ARGS)
	$(BIN)/python -m bench.bench_gateway

# Hot rows on PostgreSQL: the single write lock against per-series locks (a table; slow).
bench-hot: install
	$(BIN)/python -m bench.bench_hot_rows

# Consume and usage latency at 10^4, 10^5 and 10^6 users (slow: up to ~20 minutes;
# BENCH_ARGS="--sizes 10000,100000" for less). JSON in bench/out/size.json.
bench-size: install
	$(BIN)/python -m bench.bench_size $(BENCH_ARGS)

# Group commit on SQLite and PostgreSQL at 1, 8 and 64 callers, on against off (a table; a minute or two).
bench-group: install
	$(BIN)/python -m bench.bench_group_commit

# What gateway mode adds to a model call, p50/p99, against the test upstream alone (a table).
bench-gateway: install
	$(BIN)/python -m bench.bench_gateway $(BENCH_ARGS)

# Builds the Dockerfile with podman on a Debian base made here (no image registry
# answers from these machines), runs it, asks /healthz and makes one consume
# (docs/deploy.md). The first run pays a few minutes for debootstrap; the base is
# kept in .cache/image/. Not part of `make test`; .ci/run runs it after.
image-test: install
	TOKENQUOTA_IMAGE_TEST=1 $(BIN)/pytest -n 0 -p no:cacheprovider tests/image -q $(PYTEST_ARGS)
