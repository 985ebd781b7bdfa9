#!/bin/sh
# One PostgreSQL, two databases: Prefect's (with the pg_trgm extension it needs) and MLflow's.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE DATABASE ${PREFECT_DB};
CREATE DATABASE ${MLFLOW_DB};
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${PREFECT_DB}" -c "CREATE EXTENSION IF NOT EXISTS pg_trgm;"
