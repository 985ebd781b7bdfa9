#!/bin/sh
# The team stack from a clone, in one go: build and start every service, put MNIST into the
# stack when you have it on disk, register the deployments, create the automations. Safe to
# run again (a changed .env), and it is the upgrade: after a `git pull` it rebuilds the images,
# the databases migrate as the servers start, the deployments and automations become this
# release's, and every record stays (CHANGELOG.md). docs/deployment.md shows this file;
# tests/test_compose_stack.py and tests/test_compose_upgrade.py run the README's commands.
#   DATA_DIR=DIR  the folder holding MNIST/raw/ (as for `dae run --data-dir`): copied into the
#                 workers' /data volume; without it the worker downloads MNIST when it first trains.
set -eu
cd "$(dirname "$0")/.."
if [ ! -f .env ]; then
  echo "team-setup: no .env here" >&2
  echo "  fix: cp .env.example .env, then set every secret in it" >&2
  exit 2
fi
# Compose v2 (`docker compose`) where it is installed, else v1 (`docker-compose`).
if docker compose version >/dev/null 2>&1; then compose="docker compose"; else compose="docker-compose"; fi
# The commit baked into the worker image (tagged on every MLflow run).
GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export GIT_COMMIT

release=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
echo "team-setup: dae-pipeline $release: building and starting the stack (waits until the servers are healthy)"
# --remove-orphans: a service an older release had and this one has not stops with it.
$compose up -d --build --remove-orphans
if [ -n "${DATA_DIR:-}" ]; then
  echo "team-setup: copying $DATA_DIR/MNIST into the workers' data volume"
  tar -C "$DATA_DIR" -c MNIST | $compose exec -T worker tar -C /data -x
fi
echo "team-setup: registering the deployments of prefect.yaml"
$compose exec -T worker prefect --no-prompt deploy --all
echo "team-setup: creating the automations (lost machines, failure notices)"
$compose exec -T worker dae setup
setting() { value=$(sed -n "s/^$1=//p" .env | tail -n 1); echo "${value:-$2}"; }
host=$(setting UI_HOST 127.0.0.1)
echo "team-setup: done. Prefect UI http://$host:$(setting PREFECT_PORT 4200), MLflow UI http://$host:$(setting MLFLOW_PORT 5000)"
