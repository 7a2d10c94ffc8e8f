# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The public datasets mirror, when this checkout sits beside one (as in CI).
MIRROR ?= $(wildcard ../shared/datasets)
PARAPHRASE_MIRROR ?= $(wildcard ../shared/paraphrase)
TRACES_MIRROR ?= $(wildcard ../shared/traces)
MIRROR_ENV := $(if $(MIRROR),ROUTER_ML_DATA_MIRROR=$(abspath $(MIRROR))) \
	$(if $(PARAPHRASE_MIRROR),ROUTER_ML_PARAPHRASE_MIRROR=$(abspath $(PARAPHRASE_MIRROR))) \
	$(if $(TRACES_MIRROR),ROUTER_ML_TRACES_MIRROR=$(abspath $(TRACES_MIRROR)))

.PHONY: install run data test bench bench-gateway default-bundle clean

install: $(STAMP)

# torch is pinned and installed first so that no multi-GB CUDA build is pulled in.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The gateway on the default bundle with the offline replay provider (builds the outcomes table first if missing),
# with one real prompt per second of demo traffic for the dashboard.
run: install data/outcomes.parquet
	$(MIRROR_ENV) $(BIN)/router-ml serve --demo-traffic 1

# Rebuild the outcomes table from the pinned public datasets.
data: install
	$(MIRROR_ENV) $(BIN)/router-ml datasets prepare

test: install
	$(MIRROR_ENV) $(BIN)/python -m pytest

# Benchmarks: routing quality (four tracks), decision latency, the semantic cache, output lengths, usage forecasts and the metrics' overhead; results, REPORT.md and PNGs in benchmarks/results/.
bench: install data/outcomes.parquet
	@start=$$(date +%s); \
	$(MIRROR_ENV) $(BIN)/python benchmarks/routing_quality.py && \
	$(MIRROR_ENV) $(BIN)/python benchmarks/decision_latency.py && \
	$(MIRROR_ENV) $(BIN)/python benchmarks/semantic_cache.py && \
	$(MIRROR_ENV) $(BIN)/python benchmarks/output_length.py && \
	$(MIRROR_ENV) $(BIN)/python benchmarks/forecast.py && \
	$(BIN)/python benchmarks/metrics_overhead.py && \
	echo "make bench: $$(( $$(date +%s) - start )) s in all"

# Gateway latency over a loopback 50 ms upstream, next to the LiteLLM proxy (results and PNG in benchmarks/results/).
# Load generator: wrk (installed with apt-get when missing). LiteLLM: the pinned litellm-bench extra of pyproject.toml,
# in its own venv (.venv-litellm) so that it never touches .venv.
LITELLM_VENV := .venv-litellm
LITELLM_STAMP := $(LITELLM_VENV)/.installed-stamp
bench-gateway: install $(LITELLM_STAMP)
	@command -v wrk >/dev/null || { echo "installing wrk (apt-get install -y wrk)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y wrk || { $$SUDO apt-get update && $$SUDO apt-get install -y wrk; }; }
	$(BIN)/python benchmarks/gateway_latency.py

$(LITELLM_STAMP): pyproject.toml | $(STAMP)
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LITELLM_VENV)/bin/python -m pip install --quiet "$$($(BIN)/python -c 'import tomllib; \
	  print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["litellm-bench"])')"
	touch $(LITELLM_STAMP)

data/outcomes.parquet: | $(STAMP)
	$(MIRROR_ENV) $(BIN)/router-ml datasets prepare

# The default router bundle shipped in models/default, rebuilt from the public data.
default-bundle: install data/outcomes.parquet
	$(BIN)/router-ml train --name default --router auto --source routerbench --trials 8

clean:
	rm -rf $(VENV) $(LITELLM_VENV) data .pytest_cache
