"""MLflow's client, for the adapters alone: tasks, flows and commands ask an adapter
(``mlflow_runs``, ``run_search``, ``model_registry``, ``champion``), which says what it
does, instead of holding the client themselves (a ``protected`` contract in
pyproject.toml). MLflow is imported when a client is made, not before: ``dae predict``'s
fast path imports the adapters and never MLflow."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient


def client() -> MlflowClient:
    """A client of this process's tracking store and registry (``MLFLOW_TRACKING_URI``)."""
    from mlflow import MlflowClient

    return MlflowClient()
