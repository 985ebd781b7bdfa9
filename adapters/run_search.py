"""Runs found again: a run by id if finished, a parent's children, the run a Prefect flow
run made, the RUNNING runs flow runs left, and a run's summary rebuilt from what it logged."""

from __future__ import annotations

from typing import Any

from mlflow.entities import Run

from adapters.mlflow_client import client
from adapters.mlflow_runs import PARENT_TAG, end_run, set_tags, stored_run
from adapters.tags import CELL, FLOW_RUN_ID
from dae_core.summary import CURVE_KEYS, RunSummary, summary_from_metrics


def finished_run(run_id: str) -> Run | None:
    """The run ``run_id`` if the store holds it FINISHED and not deleted, else None."""
    run = stored_run(run_id)
    finished = run is not None and run.info.status == "FINISHED" and run.info.lifecycle_stage == "active"
    return run if finished else None


def child_runs(parent_run_id: str, status: str | None = None) -> list[Run]:
    """A parent's child runs (those in ``status``, e.g. RUNNING, if given)."""
    parent = client().get_run(parent_run_id)
    in_status = f" and attributes.status = '{status}'" if status else ""
    return list(client().search_runs([parent.info.experiment_id],
                                     f"tags.`{PARENT_TAG}` = '{parent_run_id}'{in_status}"))


def finished_children(parent_run_id: str) -> dict[tuple[str, int], str]:
    """The FINISHED child runs of a parent, by (``dae.cell`` tag, seed param)."""
    return {(run.data.tags.get(CELL, ""), int(run.data.params["seed"])): run.info.run_id
            for run in child_runs(parent_run_id, "FINISHED") if "seed" in run.data.params}


def fail_running_children(parent_run_id: str, tags: dict[str, Any]) -> list[str]:
    """End the RUNNING children of a parent FAILED, with ``tags``; returns their ids."""
    ended = [run.info.run_id for run in child_runs(parent_run_id, "RUNNING")]
    for run_id in ended:
        set_tags(run_id, tags)
        end_run(run_id, succeeded=False)
    return ended


def running_runs_of_flow_runs() -> list[Run]:
    """Every RUNNING run, in every experiment, that a Prefect flow run created."""
    tracker = client()
    experiments = [experiment.experiment_id for experiment in tracker.search_experiments()]
    if not experiments:
        return []
    return [run for run in tracker.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=1000)
            if run.data.tags.get(FLOW_RUN_ID)]


def run_of_flow_run(flow_run_id: str, experiment: str) -> str | None:
    """The MLflow run that a Prefect flow run created (found by its tag)."""
    found = client().get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client().search_runs([found.experiment_id], f"tags.`{FLOW_RUN_ID}` = '{flow_run_id}'")
    return runs[0].info.run_id if runs else None


def summary_from_run(run_id: str) -> RunSummary:
    """Rebuild a run's summary from what it logged: how a comparison collects cells that
    ran on other machines, which share only the tracking server."""
    tracker = client()

    def curve(key: str) -> list[float]:
        return [m.value for m in sorted(tracker.get_metric_history(run_id, key), key=lambda m: m.step)]

    return summary_from_metrics({key: curve(key) for key in CURVE_KEYS}, tracker.get_run(run_id).data.metrics, run_id)
