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

.PHONY: install run data test test-shifted-clock bench bench-gateway default-bundle clean

install: $(STAMP)

# torch is pinned and installed first so that no multi-GB CUDA build is pulled in.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The gateway on the default bundle with the offline replay provider, with one real prompt per second of demo
# traffic for the dashboard. Serving needs no outcomes table: `router-ml serve` builds the static encoder and
# RouterBench's replay slice when they are missing (seconds); `make data` builds the full table for training.
run: install
	$(MIRROR_ENV) $(BIN)/router-ml serve --demo-traffic 1

# Rebuild the outcomes table from the pinned public datasets.
data: install
	$(MIRROR_ENV) $(BIN)/router-ml datasets prepare

test: install
	$(MIRROR_ENV) $(BIN)/python -m pytest

# The calendar-sensitive tests again with the system clock shifted by libfaketime (Debian package faketime) to the
# last minutes of a month and to the first of the next, in UTC. The "@" form starts the clock there and lets it run
# (a frozen clock would hang sleeps and timeouts). Code that reads the system's "now" where it should take a
# router_ml.clock, or a test that passes only on the day it was written, fails here. The modules that train a bundle
# (test_analytics, test_tenants' gateway tests) pin their app's clock instead and are left to `make test`. ~1 min.
# libfaketime cannot time Python's lock waits (threading.Event.wait(t), queue.get(timeout=t) never return under it,
# whatever the shift; DONT_FAKE_MONOTONIC=1 makes time.sleep fail instead), so code that waits on a timed lock in the
# faked process (the demo traffic's thread, for one) cannot run here.
SHIFTED_CLOCKS := 2027-02-28T23:55:00 2027-03-01T00:05:00
SHIFTED_CLOCK_TESTS := tests/test_clock_boundaries.py tests/test_forecast.py tests/calllog/test_store.py \
	tests/serve/tenancy/test_limits.py tests/serve/tenancy/test_admission.py \
	tests/serve/tenancy/test_tenants.py::test_store_validates_names_and_settings_naming_the_field \
	tests/serve/tenancy/test_tenants.py::test_keys_are_stored_only_as_hashes_and_revocation_reaches_other_processes \
	tests/serve/tenancy/test_tenants.py::test_cli_creates_sets_issues_and_revokes \
	tests/serve/tenancy/test_tenants.py::test_first_start_creates_the_demo_tenant_and_its_key_once
test-shifted-clock: install
	@command -v faketime >/dev/null || { echo "test-shifted-clock needs faketime: apt-get install faketime"; exit 1; }
	@for at in $(SHIFTED_CLOCKS); do \
	  echo "== the system clock starts at $$at UTC"; \
	  TZ=UTC $(MIRROR_ENV) faketime -f "@$$(echo $$at | tr T ' ')" \
	    $(BIN)/python -m pytest -q -p no:cacheprovider $(SHIFTED_CLOCK_TESTS) || exit 1; \
	done

# Benchmarks: routing quality (four tracks), decision latency, the semantic cache, output lengths, usage forecasts and the metrics' overhead; results, REPORT.md and PNGs in benchmarks/results/.
bench: install data/outcomes.parquet
	@start=$$(date +%s); \
	$(MIRROR_ENV) $(BIN)/python benchmarks/routing_quality.py && \
	$(MIRROR_ENV) $(BIN)/python benchmarks/online_quality.py && \
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
