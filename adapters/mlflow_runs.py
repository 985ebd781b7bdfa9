"""A run's life in MLflow: created in its experiment, its parameters, dataset, metrics,
tags, files and system metrics logged, ended. Runs are addressed by id (never the
thread-local active run), so tasks on any thread or worker log into the right run.

Each epoch's metrics go in one ``log_batch`` request: against a remote tracking server
a request costs tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag

from adapters.mlflow_client import client
from adapters.mlflow_links import EXPERIMENT_KIND, experiment_description
from adapters.mlflow_store import tracking_uri
from adapters.tags import DESCRIPTION, GIT_COMMIT
from dae_core.config import ExperimentConfig
from dae_core.summary import epoch_metrics
from dae_core.train import History

PARENT_TAG = "mlflow.parentRunId"


def git_commit() -> str | None:
    """The source commit: ``DAE_GIT_COMMIT`` (set in container builds) or the checkout's HEAD."""
    if commit := os.environ.get("DAE_GIT_COMMIT"):
        return commit
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent, check=True,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def experiment_id(name: str) -> str:
    """The experiment's id, created (or, made by someone else, adopted) as a model-training
    experiment with a description."""
    tracker = client()
    experiment = tracker.get_experiment_by_name(name)
    if experiment is None:
        try:
            return tracker.create_experiment(name, tags=dict([EXPERIMENT_KIND,
                                                              (DESCRIPTION, experiment_description(name))]))
        except mlflow.exceptions.MlflowException:
            # Another process created it between our lookup and create.
            experiment = tracker.get_experiment_by_name(name)
    key, kind = EXPERIMENT_KIND
    if experiment.tags.get(key) != kind:
        tracker.set_experiment_tag(experiment.experiment_id, key, kind)
    if DESCRIPTION not in experiment.tags:  # made before dae described its experiments
        tracker.set_experiment_tag(experiment.experiment_id, DESCRIPTION, experiment_description(name))
    return experiment.experiment_id


def start_run(experiment: str, run_name: str, tags: dict[str, str],
              parent_run_id: str | None = None) -> str:
    """Create a RUNNING run and return its id."""
    all_tags = {key: value for key, value in tags.items() if value}
    if commit := git_commit():
        all_tags[GIT_COMMIT] = commit
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client().create_run(experiment_id(experiment), run_name=run_name, tags=all_tags)
    return run.info.run_id


def end_run(run_id: str, succeeded: bool) -> None:
    client().set_terminated(run_id, "FINISHED" if succeeded else "FAILED")


@contextlib.contextmanager
def ends_run(run_id: str) -> Iterator[str]:
    """FINISHED when the block completes, FAILED on any exception (interrupts included):
    a run is never left RUNNING by a flow that failed in this process."""
    try:
        yield run_id
    except BaseException:
        end_run(run_id, succeeded=False)
        raise
    end_run(run_id, succeeded=True)


def stored_run(run_id: str) -> Run | None:
    """The run ``run_id``, or None when the store does not know it."""
    try:
        return client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None


def reopen_run(run_id: str, tags: dict[str, Any]) -> bool:
    """Mark an unfinished run RUNNING again to continue it; False when the store does not
    know it or it has already finished."""
    run = stored_run(run_id)
    if run is None or run.info.status == "FINISHED" or run.info.lifecycle_stage != "active":
        return False
    client().update_run(run_id, status="RUNNING")
    set_tags(run_id, tags)
    return True


def log_params(run_id: str, params: dict[str, Any]) -> None:
    client().log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])


def log_config(run_id: str, config: ExperimentConfig, extra: dict[str, Any] | None = None) -> None:
    log_params(run_id, {**config.flat(), "dataset": config.data.dataset, **(extra or {})})


def log_dataset(run_id: str, name: str, digest: str, source: str, sizes: dict[str, int]) -> None:
    dataset = Dataset(
        name=name, digest=digest[:36], source_type="local",
        source=json.dumps({"uri": source}), profile=json.dumps(sizes),
    )
    inputs = [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])]
    try:
        client().log_inputs(run_id, datasets=inputs)
    except mlflow.exceptions.MlflowException:
        # MLflow's store looks the dataset up and inserts it when missing, so runs of one
        # experiment logging it at once can all insert, and all but one are refused for a
        # duplicate key. The row is there by then: a second try links it to the run.
        client().log_inputs(run_id, datasets=inputs)


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """All metrics in one request; ``step`` is the 1-based epoch for histories."""
    stamp = int(time.time() * 1000)
    batch = [Metric(key, float(value), stamp, step or 0) for key, value in metrics.items()]
    client().log_batch(run_id, metrics=batch)


def log_history(run_id: str, phase: str, history: History) -> None:
    """Re-log a restored history, one request per epoch, e.g. after a resume."""
    curves = history.as_dict()
    for index in range(history.epochs):
        # A curve the run does not measure (no validation split: no val_*) is empty.
        log_metrics(run_id, epoch_metrics(phase, {name: values[index] for name, values in curves.items()
                                                  if index < len(values)}),
                    step=index + 1)


def set_description(run_id: str, markdown: str) -> None:
    client().set_tag(run_id, DESCRIPTION, markdown)


@contextlib.contextmanager
def system_metrics(run_id: str, sampling_interval_s: float = 1.0) -> Iterator[None]:
    """CPU, memory, disk, network (and GPU where nvidia-ml-py finds one) as ``system/*``
    metrics of the run while the block runs, one sample a second so that a 10-second run
    has samples. MLflow's own monitor (the one behind ``start_run(log_system_metrics=True)``),
    addressed by run id: the runs here are never the thread's active run, and MLflow's
    interval setter would write ``os.environ``."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=sampling_interval_s, tracking_uri=tracking_uri())
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    client().log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


def log_files(run_id: str, paths: Iterable[Path], folder: str) -> None:
    tracker = client()
    for path in paths:
        tracker.log_artifact(run_id, str(path), folder)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    client().log_text(run_id, text, artifact_file)


def log_table(run_id: str, table: dict[str, list[Any]], artifact_file: str) -> None:
    client().log_table(run_id, table, artifact_file)


def load_text(run_id: str, artifact_file: str) -> str | None:
    """A run's text artifact, or None where the run has none by that name."""
    try:
        return mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact_file}")
    except (mlflow.exceptions.MlflowException, OSError):
        return None


def run_status(run_id: str) -> str | None:
    """A run's status (RUNNING, FINISHED, FAILED, KILLED), or None when the store does not
    know the run."""
    run = stored_run(run_id)
    return run.info.status if run is not None else None


def has_metric(run_id: str, key: str) -> bool:
    """Whether the run has logged ``key`` at least once."""
    return bool(client().get_metric_history(run_id, key))
