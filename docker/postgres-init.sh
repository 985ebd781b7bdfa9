#!/bin/sh
# One PostgreSQL, four databases: Prefect's (with the pg_trgm extension it needs), MLflow's,
# the users and grants of MLflow's login, and dae-tune's Optuna studies, owned by a role of
# their own (the workers hold its password, not the superuser's).
# The `databases` service of docker-compose.yml runs this at every `up`, over the network
# (PGHOST, PGUSER, PGPASSWORD): it makes what is missing and leaves what is there, so a new
# volume, a stack from an older release and a restarted stack all end up the same; the
# role's password follows .env (TUNING_DB_PASSWORD) each time.
set -eu
export PGOPTIONS="-c client_min_messages=warning"  # no "already exists" notices on every start
psql="psql -v ON_ERROR_STOP=1 -q --dbname postgres"
# Waits out the seconds between "healthy" and accepting logins over the network.
tries=0
until $psql -c "SELECT 1" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    $psql -c "SELECT 1"  # says why, then fails
    exit 1
  fi
  sleep 1
done
$psql -v prefect_db="$PREFECT_DB" -v mlflow_db="$MLFLOW_DB" -v auth_db="$MLFLOW_AUTH_DB" \
  -v tuning_user="$TUNING_DB_USER" -v tuning_password="$TUNING_DB_PASSWORD" -v tuning_db="$TUNING_DB" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'tuning_user')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'tuning_user') \gexec
ALTER ROLE :"tuning_user" LOGIN PASSWORD :'tuning_password';
SELECT format('CREATE DATABASE %I', name)
  FROM unnest(ARRAY[:'prefect_db', :'mlflow_db', :'auth_db']) AS name
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = name) \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'tuning_db', :'tuning_user')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'tuning_db') \gexec
SQL
psql -v ON_ERROR_STOP=1 -q --dbname "$PREFECT_DB" -c "CREATE EXTENSION IF NOT EXISTS pg_trgm"
echo "databases ready: $PREFECT_DB $MLFLOW_DB $MLFLOW_AUTH_DB $TUNING_DB (owner $TUNING_DB_USER)"
