#!/bin/sh
# One PostgreSQL, four databases: Prefect's (with the pg_trgm extension it needs), MLflow's,
# the users and grants of MLflow's login, and dae-tune's Optuna studies, owned by a role of
# their own (the workers hold its password, not the superuser's). Runs only on an empty data
# volume; a stack from before the login or the studies: docs/deployment.md, "Upgrading".
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE DATABASE ${PREFECT_DB};
CREATE DATABASE ${MLFLOW_DB};
CREATE DATABASE ${MLFLOW_AUTH_DB};
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v tuning_user="$TUNING_DB_USER" -v tuning_password="$TUNING_DB_PASSWORD" -v tuning_db="$TUNING_DB" <<'SQL'
CREATE ROLE :"tuning_user" LOGIN PASSWORD :'tuning_password';
CREATE DATABASE :"tuning_db" OWNER :"tuning_user";
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${PREFECT_DB}" -c "CREATE EXTENSION IF NOT EXISTS pg_trgm;"
