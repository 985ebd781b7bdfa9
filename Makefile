# dae-pipeline: a short menu. `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where MNIST lies (or will be downloaded to): <DATA_DIR>/MNIST/raw/
DATA_DIR ?= data
PRESET ?= lecture
BACKUP_DIR ?= backups

.PHONY: help install run compare bench bench-all test test-fast test-under-load lint up backup restore down deploy clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(BIN)/dae: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/dae  ## create .venv and install the project with its dev tools

run: $(BIN)/dae  ## the lecture experiment end to end (embedded Prefect + local MLflow)
	$(BIN)/dae run --preset $(PRESET) --data-dir $(DATA_DIR) --summary-json dae-work/summary.json

compare: $(BIN)/dae  ## Adam vs SGD x noise on/off, 3 seeds
	$(BIN)/dae compare --seeds 3 --data-dir $(DATA_DIR) --summary-json dae-work/comparison.json

bench: $(BIN)/dae  ## the lecture's data path against ours, per epoch
	$(BIN)/dae bench --data-dir $(DATA_DIR) --json dae-work/bench.json

bench-all: $(BIN)/dae  ## every benchmark of docs/benchmarks.md (~20 min; PostgreSQL for the servers part, hey for the model server)
	benchmarks/run_all.sh $(DATA_DIR) dae-work/bench

test: $(BIN)/dae  ## the whole test suite (tiny generated data, no network): the compose test beside the rest, the timing guards last
	$(BIN)/python tests/suite.py

test-fast: $(BIN)/dae  ## the loop after every change: all but the slow, real-stack, browser, compose and gpu tests
	$(BIN)/python -m pytest -q -m "not slow and not realstack and not browser and not compose and not gpu"

test-under-load: $(BIN)/dae  ## before a release: the slow and real-stack tests 3 times beside a CPU hog (stress-ng if installed)
	$(BIN)/python tests/under_load.py 3

lint: $(BIN)/dae  ## ruff, and the contracts of pyproject.toml (import-linter: layers, no import circles, MLflow and Optuna through adapters)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Compose v2 where installed, else v1 (as docker/team-setup.sh picks it); asked only by the
# targets that use it, not by every `make`.
COMPOSE = $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

up:  ## the team stack in Docker, built, started, deployed, set up (needs .env; `make up DATA_DIR=DIR` copies MNIST in)
	docker/team-setup.sh

deploy:  ## register the deployments of prefect.yaml again, then the automations of `dae setup`
	$(COMPOSE) exec -T worker prefect --no-prompt deploy --all
	$(COMPOSE) exec -T worker dae setup

backup:  ## one archive of the running team stack: every database and artifact, checked (BACKUP_DIR=backups)
	$(PYTHON) docker/stack_archive.py backup --to $(BACKUP_DIR)

restore:  ## restore ARCHIVE=backups/dae-backup-....tar onto an empty team stack, checked against its manifest
	@test -n "$(ARCHIVE)" || { echo "make restore: which archive? make restore ARCHIVE=backups/dae-backup-....tar" >&2; exit 2; }
	$(PYTHON) docker/stack_archive.py restore $(ARCHIVE)

down:  ## stop the team stack (volumes are kept)
	$(COMPOSE) down

clean:  ## remove run outputs (keeps .venv and data)
	rm -rf dae-work mlflow.db .pytest_cache
