# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The public datasets mirror, when this checkout sits beside one (as in CI).
MIRROR ?= $(wildcard ../shared/datasets)
MIRROR_ENV := $(if $(MIRROR),ROUTER_ML_DATA_MIRROR=$(abspath $(MIRROR)))

.PHONY: install run data test bench default-bundle clean

install: $(STAMP)

# torch is pinned and installed first so that no multi-GB CUDA build is pulled in.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The gateway on the default bundle with the offline replay provider (builds the outcomes table first if missing).
run: install data/outcomes.parquet
	$(MIRROR_ENV) $(BIN)/router-ml serve

# Rebuild the outcomes table from the pinned public datasets.
data: install
	$(MIRROR_ENV) $(BIN)/router-ml datasets prepare

test: install
	$(MIRROR_ENV) $(BIN)/python -m pytest

# Benchmarks: routing quality (four tracks) and decision latency; results, REPORT.md and PNGs in benchmarks/results/.
bench: install data/outcomes.parquet
	@start=$$(date +%s); \
	$(MIRROR_ENV) $(BIN)/python benchmarks/routing_quality.py && \
	$(MIRROR_ENV) $(BIN)/python benchmarks/decision_latency.py && \
	echo "make bench: $$(( $$(date +%s) - start )) s in all"

data/outcomes.parquet: | $(STAMP)
	$(MIRROR_ENV) $(BIN)/router-ml datasets prepare

# The default router bundle shipped in models/default, rebuilt from the public data.
default-bundle: install data/outcomes.parquet
	$(BIN)/router-ml train --name default --router auto --source routerbench --trials 8

clean:
	rm -rf $(VENV) data .pytest_cache
