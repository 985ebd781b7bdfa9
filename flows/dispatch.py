"""The Prefect tasks that start flow runs or wait for them: deployment runs sent to the work
pool and awaited (how ``dae compare --fan-out`` and ``dae tune --fan-out`` spread their work
over the pool's workers), and a grid cell run as a subflow. They are tasks so that the UI
shows each dispatch and wait as a step of its flow, and they live in ``flows/`` because
flows are the only layer that starts or waits for flow runs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from prefect import get_client, get_run_logger, task
from prefect.client.schemas.objects import State
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from adapters import progress
from adapters.studies import StudyProgress
from dae_core.comparison import CellRun
from dae_core.config import ConfigError, ExperimentConfig
from flows.experiment import cell_parameters, dae_experiment

POLL_S = 2.0


@task(name="dispatch-run", task_run_name="dispatch {label}")
def dispatch(deployment_name: str, parameters: dict[str, Any], label: str) -> str:
    """Start one run of ``deployment_name`` (as a subflow of this flow run, so the UI shows
    it under its dispatcher) that any worker of its pool may pick up; returns its id."""
    try:
        dispatched = run_deployment(deployment_name, parameters=parameters, timeout=0, as_subflow=True)
    except ObjectNotFound:
        raise ConfigError(f"--fan-out {deployment_name}: no such deployment on this Prefect server",
                          "run `prefect deploy --all` there, or name one that `prefect deployment ls` lists") from None
    return str(dispatched.id)


def wait_for_runs(flow_run_ids: list[str], timeout_s: int,
                  while_waiting: Callable[[], None] | None = None) -> dict[str, State]:
    """The final state of each flow run, once all have one; ``while_waiting`` is called
    between polls (e.g. to report progress). Raises ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    final: dict[str, State] = {}
    with get_client(sync_client=True) as client:
        while True:
            for flow_run_id in flow_run_ids:
                if flow_run_id not in final:
                    state = client.read_flow_run(uuid.UUID(flow_run_id)).state
                    if state is not None and state.is_final():
                        final[flow_run_id] = state
            if while_waiting is not None:
                while_waiting()
            if len(final) == len(flow_run_ids):
                return final
            if time.monotonic() > deadline:
                waiting = [i for i in flow_run_ids if i not in final]
                raise TimeoutError(f"flow runs {', '.join(waiting)} not done after {timeout_s} s")
            time.sleep(POLL_S)


@task(name="run-cell")
def run_cell(config: ExperimentConfig, cell: str, data_dir: str, download: bool, experiment: str,
             work_dir: str, parent_run_id: str) -> CellRun:
    """One grid cell at one seed, as a child flow run and a child MLflow run."""
    summary = dae_experiment(**cell_parameters(config, cell, parent_run_id, download, experiment),
                             data_dir=data_dir, work_dir=work_dir)
    return CellRun(cell, config.seed, summary)


@task(name="wait-for-cell", task_run_name="wait for {cell} seed {seed}")
def wait_for_cell(flow_run_id: str, cell: str, seed: int, timeout_s: int) -> None:
    """Return once a dispatched cell's flow run has completed; raise if it ended otherwise."""
    try:
        state = wait_for_runs([flow_run_id], timeout_s)[flow_run_id]
    except TimeoutError:
        raise TimeoutError(f"cell {cell} seed {seed}: flow run {flow_run_id} not done after {timeout_s} s") from None
    if not state.is_completed():
        raise RuntimeError(f"cell {cell} seed {seed}: flow run {flow_run_id} ended {state.type.value}")


@task(name="await-workers")
def await_workers(workers: dict[str, int], names: list[str], storage: str, trials: int, timeout_s: int) -> None:
    """Wait until every worker's run has ended, reporting each trial the studies count as it
    comes (those they held when the wait began, an earlier run's, as done earlier: a worker
    takes seconds to start, a trial longer). A worker that failed or died is named in the
    log; its share of trials was taken by the others (whether the budget was met is for
    ``read_studies`` to say)."""
    logger = get_run_logger()
    studies = StudyProgress(names, storage, trials)
    reported = studies.counted()
    if reported:
        progress.notify(progress.ProgressEvent(progress.Phase.REUSED, reported, reported))

    def report_new_trials() -> None:
        nonlocal reported
        counted = studies.counted()
        for number in range(reported, counted):
            progress.notify(progress.ProgressEvent(progress.Phase.TRIAL, number + 1, trials * len(names)))
        reported = max(reported, counted)

    for flow_run_id, state in wait_for_runs(list(workers), timeout_s, report_new_trials).items():
        if not state.is_completed():
            logger.warning("worker %d (flow run %s) ended %s", workers[flow_run_id], flow_run_id, state.type.value)
