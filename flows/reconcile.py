"""``dae-reconcile``: end the MLflow runs of flow runs that died with their machine.

Deployed as ``dae-reconcile/crashed-runs`` and started by the automation that ``dae setup``
creates whenever a dae flow run is marked Crashed or Cancelled; safe to run by hand at any
time (it only touches runs whose flow run has ended)."""

from __future__ import annotations

from prefect import flow

from tasks.reconcile import end_runs_of_dead_flow_runs
from tasks.run import check_tracking


@flow(name="dae-reconcile", flow_run_name="reconcile-mlflow-runs")
def dae_reconcile() -> list[str]:
    """Returns the ids of the MLflow runs it ended FAILED."""
    check_tracking()
    return end_runs_of_dead_flow_runs()
