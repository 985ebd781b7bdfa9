#!/bin/sh
# Entry point of the stack's Prefect and MLflow servers: `start-server.sh COMMAND...`.
# 1. Refuses to publish a server beyond loopback while a secret still has its example
#    value from .env.example ("change-me..."): exposed with a known password is exposed
#    without one.
# 2. For MLflow's login (--app-name basic-auth), writes its settings file here, at start,
#    from the environment: MLflow reads the auth database's URI only from that file, and
#    nothing secret belongs in the image or the repository. The admin's name and password
#    MLflow reads itself from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD.
#    Checked logins are cached for 60 s: each check hashes the password (PBKDF2), which
#    took a log request from 12 ms to 386 ms on a 2-core machine (27 ms cached); the price
#    is that an old password works for up to a minute after a change on another worker.
# 3. For MLflow's tracking server (MLFLOW_BACKEND_STORE_URI), brings its database's schema
#    to this MLflow's release first (`mlflow db upgrade`: creates it in an empty database,
#    migrates one made by an older MLflow, does nothing to a current one): an upgraded
#    image starts on the data of the release before it. Its login's database migrates
#    itself at start.
set -eu

case "${BIND_ADDRESS:-127.0.0.1}" in
  127.*|localhost|::1) ;;
  *)
    example=$(env | sed -n 's/^\([A-Z0-9_]*\)=.*change-me.*/\1/p' | sort | tr '\n' ' ')
    if [ -n "$example" ]; then
      echo "refusing to start on BIND_ADDRESS=${BIND_ADDRESS}: still the example value of .env.example: ${example}" >&2
      echo "  fix: set real secrets in .env (e.g. \`openssl rand -hex 24\` each), or bind to 127.0.0.1" >&2
      exit 78
    fi
    ;;
esac

if [ -n "${MLFLOW_AUTH_DATABASE_URI:-}" ]; then
  config="${MLFLOW_AUTH_CONFIG_DIR:-/tmp}/mlflow-auth.ini"
  umask 077
  cat > "$config" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
INI
  export MLFLOW_AUTH_CONFIG_PATH="$config"
  unset MLFLOW_AUTH_DATABASE_URI
fi

if [ -n "${MLFLOW_BACKEND_STORE_URI:-}" ]; then
  mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"
fi

exec "$@"
