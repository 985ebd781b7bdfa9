"""MLflow runs whose flow run died with its machine.

A flow run that is SIGKILLed with its machine never ends its MLflow run: the process that
would have marked it is gone. Once Prefect has marked the flow run Crashed (the zombie
automation of ``flows/automations.py``), this task ends such runs FAILED and says why.
"""

from __future__ import annotations

import uuid

from prefect import get_client, get_run_logger, task
from prefect.exceptions import ObjectNotFound

from adapters import mlflow_runs, run_search
from adapters.tags import FAILURE, FAILURE_DETAIL, FLOW_RUN_ID

# Tags of a run ended here: what its flow run became, and Prefect's message for it.


@task(name="end-runs-of-dead-flow-runs")
def end_runs_of_dead_flow_runs() -> list[str]:
    """End FAILED every RUNNING MLflow run whose Prefect flow run has ended in any state but
    Completed (Crashed, Failed, Cancelled); returns their ids. Runs whose flow run this
    Prefect server does not know (``dae run``'s temporary server) are left alone."""
    ended = []
    logger = get_run_logger()
    with get_client(sync_client=True) as prefect:
        for run in run_search.running_runs_of_flow_runs():
            flow_run_id = run.data.tags[FLOW_RUN_ID]
            try:
                state = prefect.read_flow_run(uuid.UUID(flow_run_id)).state
            except (ObjectNotFound, ValueError):
                continue
            if state is None or not state.is_final() or state.is_completed():
                continue
            mlflow_runs.set_tags(run.info.run_id, {
                FAILURE: f"prefect flow run {state.type.value.lower()}",
                FAILURE_DETAIL: (state.message or state.name or "")[:500],
            })
            mlflow_runs.end_run(run.info.run_id, succeeded=False)
            logger.info("MLflow run %s ended FAILED: its flow run %s is %s", run.info.run_id, flow_run_id,
                        state.name)
            ended.append(run.info.run_id)
    return ended
