# The documented commands. `make test` and `make demo` build .venv themselves when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo serve test lint typecheck pytest bench clean fuzz client

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

bench: install
	$(BIN)/python bench/bench_consume.py

# Hot rows on PostgreSQL: the single write lock against per-series locks (a table; slow).
bench-hot: install
	$(BIN)/python bench/bench_hot_rows.py
