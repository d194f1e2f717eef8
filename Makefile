# Stratus developer entry points. `make help` lists them.
#
#   make up / make down   docker compose when a Docker engine answers, else the services as
#                         local processes under supervisord (python -m tools.cluster)
#   make test             venv + servers + lint + typecheck + pytest (what .ci/run runs);
#                         then the Docker stage (make test-docker); DOCKER_STAGE=0 leaves it out

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
BENCH_STAMP := $(VENV)/.stamp-install-bench
ENV_FILE := run/stratus.env
# Extra arguments: make up UP_ARGS="--workers 2 --gateway-port 9000"; make test PYTEST_ARGS=-x
# On Docker: make up COMPOSE_ARGS="--scale worker=3"; make down VOLUMES=1 (named volumes too)
UP_ARGS ?=
COMPOSE_ARGS ?=
VOLUMES ?=
# make test runs the Docker stage after pytest (about 4 minutes with the images cached, 20
# more the first time on a machine with no engine and no images); DOCKER_STAGE=0 leaves it out
DOCKER_STAGE ?= 1
DOCKER_PYTEST_ARGS ?=
PYTEST_ARGS ?=

.PHONY: help venv bench-venv images up down status servers lint typecheck test test-docker bench chaos logs clean

help:
	@echo "make venv       create $(VENV) and install the project with [dev] (again when pyproject.toml changes)"
	@echo "make up         start Stratus (docker compose, or local processes without Docker)"
	@echo "make down       stop what 'make up' started (never the database/broker servers)"
	@echo "make images     build the Docker images from Debian's packages alone (no registry needed)"
	@echo "make status     supervisord status of the local processes"
	@echo "make servers    make sure PostgreSQL, Redis and RabbitMQ answer on loopback"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make typecheck  mypy --strict"
	@echo "make test       venv, servers, lint, typecheck, pytest, then the Docker stage"
	@echo "make test-docker the Docker stage: compose clusters on a real engine (tests/docker)"
	@echo "make bench      install [dev,bench], run bench/pipeline.py, bench/auth.py, bench/kernels.py --quick, bench/datamover.py, bench/scaling.py --quick, bench/workflows.py, bench/checkpoint.py --quick"
	@echo "make chaos      the chaos suite with 2,000 jobs on private servers (make chaos CHAOS_JOBS=200)"
	@echo "make logs       follow run/logs/*.log"
	@echo "make clean      remove caches and build outputs (keeps $(VENV) and $(ENV_FILE))"

venv: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -e ".[dev]" -e "./clients/python[cli]"
	@touch $@

# the benchmarks' extra dependencies (celery, the pipeline's baseline), only for `make bench`
bench-venv: $(BENCH_STAMP)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -e ".[dev,bench]"
	@touch $@

up: venv
	@if timeout 10 docker info >/dev/null 2>&1; then \
		bash scripts/docker-engine.sh ensure && \
		bash scripts/compose.sh up -d --wait $(COMPOSE_ARGS); \
	else \
		echo "no Docker engine: running the services as local processes"; \
		$(PY) -m tools.cluster up $(UP_ARGS); \
	fi

down:
	@if [ -f $(ENV_FILE) ] && timeout 10 docker info >/dev/null 2>&1 \
		&& timeout 10 docker compose version >/dev/null 2>&1; then \
		bash scripts/compose.sh down $(if $(filter 1,$(VOLUMES)),--volumes); \
	fi
	@if [ -x $(PY) ]; then $(PY) -m tools.cluster down; fi

status: venv
	@$(PY) -m tools.cluster status

# the base image, stand-ins for PostgreSQL/RabbitMQ/Redis and stratus:latest from Debian's
# packages (cached by a hash of their inputs); starts a Docker engine when none answers
images: venv
	bash scripts/docker-engine.sh ensure
	bash deploy/docker/images.sh

servers:
	bash scripts/ensure-servers.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

test: venv servers lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)
	@if [ "$(DOCKER_STAGE)" = 1 ]; then $(MAKE) --no-print-directory test-docker; \
	else echo "the Docker stage is off (DOCKER_STAGE=$(DOCKER_STAGE))"; fi

# the Docker stage: a Docker engine (installed and started when absent, stopped after), the
# images of `make images` (reused when cached), compose clusters of containers (tests/docker);
# `make test` runs it last (unless DOCKER_STAGE=0)
test-docker: venv
	STRATUS_DOCKER_STAGE=1 $(PY) -m pytest tests/docker -s -p no:cacheprovider $(DOCKER_PYTEST_ARGS)

bench: bench-venv servers
	$(PY) bench/pipeline.py
	$(PY) bench/auth.py
	$(PY) bench/kernels.py --quick
	$(PY) bench/datamover.py
	$(PY) bench/scaling.py --quick
	$(PY) bench/workflows.py
	$(PY) bench/checkpoint.py --quick

# the chaos suite at full size (2,000 jobs) on private servers of its own; `make test` runs
# it with 200. `$(PY) bench/chaos.py` prints the same figures without pytest.
CHAOS_JOBS ?= 2000
chaos: venv
	CHAOS_JOBS=$(CHAOS_JOBS) $(PY) -m pytest tests/chaos -s $(PYTEST_ARGS)

logs:
	@ls run/logs/*.log >/dev/null 2>&1 || { echo "no logs under run/logs (make up first)"; exit 1; }
	tail -n 50 -F run/logs/*.log

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	@if [ -x $(PY) ] && $(PY) -m tools.cluster status >/dev/null 2>&1; then \
		echo "a local cluster is running: keeping run/logs"; \
	else \
		rm -rf run/logs; \
	fi
