#!/bin/sh
# One PostgreSQL, three databases: Prefect's (with the pg_trgm extension it needs), MLflow's
# and the users and grants of MLflow's login (runs only on an empty data volume; a stack from
# before the login: docker compose exec postgres createdb -U "$POSTGRES_USER" mlflow_auth).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE DATABASE ${PREFECT_DB};
CREATE DATABASE ${MLFLOW_DB};
CREATE DATABASE ${MLFLOW_AUTH_DB};
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${PREFECT_DB}" -c "CREATE EXTENSION IF NOT EXISTS pg_trgm;"
