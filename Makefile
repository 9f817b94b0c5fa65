# mlops-nb: `make help` lists the targets. Everything installs into .venv from requirements.lock.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PLOOMBER_STATS_ENABLED := false
export WHYLOGS_NO_ANALYTICS := 1
export BENTOML_DO_NOT_TRACK := true
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help install browser redis node tools image run test test-fast check-nbdev lab lock bench bench-serving serve clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

install: $(STAMP) ## create .venv with the locked versions (only when the lock changed)

browser: ## Debian's chromium for the monitoring report's test (installed only when /usr/bin/chromium is missing)
	@test -x /usr/bin/chromium || { SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }
	@/usr/bin/chromium --version

redis: ## Debian's redis-server for the online feature store's Redis test (installed only when missing)
	@test -x /usr/bin/redis-server || { SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; }
	@/usr/bin/redis-server --version

node: ## Debian's Node.js, npm and Java for the CI files' checkers (installed only when npm or java is missing)
	@command -v npm >/dev/null && command -v java >/dev/null || { SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends nodejs npm default-jre-headless; }
	@node --version

tools: install node ## the exporters' own environments (Airflow, kfp, MLflow, Kubernetes and CI checkers), kept between clones
	$(BIN)/mlops-nb export tools

image: install ## the Bento's image and the pipeline's (needs Docker with BuildKit); manifests in exports/k8s
	tag=$$($(BIN)/mlops-nb build | tail -1) && $(BIN)/mlops-nb export k8s --bento $$tag --out exports/k8s && \
	  BENTOML_HOME=$${BENTOML_HOME:-data/bentoml} $(BIN)/bentoml containerize $$tag
	docker build --build-context mlops-nb=. -f exports/k8s/Dockerfile.pipeline -t mlops-nb-pipeline .

run: install ## set up, then run the reference pipeline on the bundled flight data
	$(BIN)/mlops-nb run

test: install browser redis tools check-nbdev ## set up, then run every test (nbdev notebooks, sync check, pytest)
	$(BIN)/python -m pytest -p no:cacheprovider

test-fast: install ## pytest without the slow end-to-end builds
	$(BIN)/python -m pytest -p no:cacheprovider -m "not slow"

check-nbdev: install ## nbdev notebooks pass their own tests; exported modules match the notebooks
	$(BIN)/nbdev-test --n-workers 2
	$(BIN)/python -m pytest -p no:cacheprovider -q tests/test_nbdev_sync.py

lab: install ## JupyterLab on 127.0.0.1 with the .py task notebooks opening as notebooks
	$(BIN)/mlops-nb lab

lock: ## re-resolve requirements-dev.in + pyproject.toml into requirements.lock (needs the index)
	rm -rf /tmp/mlops-nb-lock && $(PYTHON) -m venv /tmp/mlops-nb-lock
	/tmp/mlops-nb-lock/bin/pip install --quiet -r requirements-dev.in -e .
	(echo "# Exact versions of every package (make lock regenerates it from pyproject.toml + requirements-dev.in)."; \
	 /tmp/mlops-nb-lock/bin/pip freeze --all --exclude-editable | grep -v -e '^mlops-nb' -e '^pip==') > requirements.lock

bench: install ## pipeline speed and memory against plain Ploomber (minutes)
	$(BIN)/python bench/pipeline.py

bench-serving: install ## service throughput and latency against bare Starlette (installs wrk when missing)
	@command -v wrk >/dev/null || { SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python bench/serving.py

serve: install ## serve the champion on 127.0.0.1:3000
	$(BIN)/mlops-nb serve

clean: ## remove the warehouse, products and reports (keeps .venv)
	rm -rf data/warehouse.duckdb* data/products data/bentoml data/serving data/.run.lock reports
