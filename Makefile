# Two entry points for users: `make run` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-simulate bench-ws bench-wall setup clean

$(STAMP): pyproject.toml tools/bootstrap_venv.py
	$(PY) tools/bootstrap_venv.py $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/occ up --demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist worksteal

bench: $(STAMP)
	$(BIN)/python -m bench.ingest

bench-simulate: $(STAMP)
	$(BIN)/python -m bench.simulate

bench-ws: $(STAMP)
	$(BIN)/python -m bench.ws

bench-wall: $(STAMP)
	$(BIN)/python -m bench.wall

clean:
	rm -rf var/ .pytest_cache .mypy_cache .ruff_cache
