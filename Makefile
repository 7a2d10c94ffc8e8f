# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The public datasets mirror, when this checkout sits beside one (as in CI).
MIRROR ?= $(wildcard ../shared/datasets)
MIRROR_ENV := $(if $(MIRROR),ROUTER_ML_DATA_MIRROR=$(abspath $(MIRROR)))

.PHONY: install run test bench clean

install: $(STAMP)

# torch is pinned and installed first so that no multi-GB CUDA build is pulled in.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(MIRROR_ENV) $(BIN)/router-ml datasets prepare

test: install
	$(MIRROR_ENV) $(BIN)/python -m pytest

# Benchmarks (in progress: decision latency so far); results in benchmarks/results/.
bench: install
	$(MIRROR_ENV) $(BIN)/python benchmarks/decision_latency.py

clean:
	rm -rf $(VENV) data .pytest_cache
