"""Imports everything the stack's commands load, in an environment made by a plain
`pip install .` (no extras): the worker image, where tests/test_compose_stack.py runs this
file (`python - < tests/runtime_imports.py`). Exits 1 naming each module that fails.

Every module of the package is imported (what a deployment's entry point or a `dae`
subcommand reaches, also through imports inside functions), then what those commands load by
name rather than by an import statement of ours."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback
import warnings

PACKAGES = ("dae_core", "adapters", "tasks", "flows", "dae_cli")
# Loaded inside functions, or by a library from a name in a URL or a command line.
LOADED_INSIDE_FUNCTIONS = {
    "mlflow.server.auth.client": "dae users: MLflow's login client (its package needs Flask-WTF)",
    "mlflow.pyfunc.scoring_server": "the model-server service: dae serve (MLflow's scoring app)",
    "uvicorn": "dae serve execs it",
    "torch._dynamo": "dae run/compare/tune import it before the first optimizer",
    "optuna.visualization": "dae tune: the history and slice plots",
}
# DAE_TUNING_STORAGE in docker-compose.yml: SQLAlchemy loads the driver named in the URL.
TUNING_STORAGE_URL = "postgresql+psycopg://dae_tuning@postgres:5432/optuna"


def package_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        module = importlib.import_module(package)
        names += [info.name for info in pkgutil.walk_packages(module.__path__, f"{package}.")]
    return names


def check() -> list[str]:
    failures = []
    for name in [*package_modules(), *LOADED_INSIDE_FUNCTIONS]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(name)
        except Exception:  # noqa: BLE001 (report every failing module, not only the first)
            failures.append(f"{name}: {traceback.format_exc(limit=1).strip().splitlines()[-1]}")
    try:
        import sqlalchemy

        sqlalchemy.create_engine(TUNING_STORAGE_URL)  # imports the driver, connects to nothing
    except Exception:  # noqa: BLE001
        failures.append(f"{TUNING_STORAGE_URL.split('://')[0]}: {traceback.format_exc(limit=1).splitlines()[-1]}")
    return failures


if __name__ == "__main__":
    failed = check()
    print("\n".join(failed) if failed else f"all {len(package_modules())} modules and their run-time imports load")
    sys.exit(1 if failed else 0)
