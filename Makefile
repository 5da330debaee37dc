# Two commands set everything up on a fresh machine:
#   make book   build the Jupyter Book (executing the notebooks) into _build/html
#   make test   run the whole test suite, notebooks included
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Synthetic data and smoke-run checkpoints live inside the checkout, so no stale cache from
# another version of the code is ever picked up.
CACHE  := $(CURDIR)/_build/cache
export FECLIP_SMOKE_DATA ?= $(CACHE)/synthetic
export FECLIP_RUNS ?= $(CACHE)/runs
# Test processes (pytest-xdist; the suite is checked with two, the CI machine's cores); the chapters
# always run in order on one of them.
TEST_WORKERS ?= 2

.PHONY: book test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[book,dev]"
	touch $(STAMP)

# The execution cache keys on notebook source only: book_cache.py empties it (and the smoke
# data and runs) when the installed feclip or the resolved profile changed since the last build.
book: $(STAMP)
	$(BIN)/python tools/book_cache.py --build-dir _build --package feclip --profile $${FECLIP_PROFILE:-auto}
	FECLIP_PROFILE=$${FECLIP_PROFILE:-auto} $(BIN)/jupyter-book build . -W --keep-going

test: $(STAMP)
	rm -rf $(CACHE)
	FECLIP_PROFILE=smoke $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

clean:
	rm -rf _build .pytest_cache
