"""Every MLflow call of the project. Runs are addressed by id (never the thread-local
active run), so tasks on any thread or worker log into the right run.

Each epoch's metrics go in one ``log_batch`` request: against a remote tracking server
a request costs tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException

from adapters.state_folders import exclusive_file_lock
from adapters.tags import CELL, DESCRIPTION, FLOW_RUN_ID, GIT_COMMIT
from dae_core.config import ExperimentConfig
from dae_core.errors import EXIT_SERVER, DaeError
from dae_core.summary import (
    CURVE_KEYS,
    REGISTERED_MODEL,
    SCORING_EXPERIMENT,
    RunSummary,
    epoch_metrics,
    summary_from_metrics,
)
from dae_core.train import History

PARENT_TAG = "mlflow.parentRunId"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else MLflow's own default (``sqlite:///mlflow.db``)."""
    return mlflow.get_tracking_uri()


def store_identity() -> str:
    """The tracking store this process writes to, as one string: the URI, with a SQLite
    file's path made absolute (``sqlite:///mlflow.db`` means a different file in each
    working directory)."""
    from adapters.served_model import store_identity_of

    return store_identity_of(tracking_uri(), Path.cwd())


def client() -> MlflowClient:
    return MlflowClient()


class TrackingUnavailable(DaeError, RuntimeError):
    """The tracking store cannot be reached; raised before any training starts."""

    exit_code = EXIT_SERVER
    fix = "start the tracking server, or unset MLFLOW_TRACKING_URI to track into ./mlflow.db"


class TrackingRefused(TrackingUnavailable):
    """The tracking server answers but refuses these credentials (or none)."""

    fix = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server "
           "(on the team stack: your own, or DAE_WORKER_* of its .env)")


class StoreMissing(DaeError):
    """A command that only reads found no tracking store where it looked (and made none)."""

    exit_code = EXIT_SERVER
    fix = ("run `dae run` first (it creates the store and registers a model), or point MLFLOW_TRACKING_URI at "
           "the store that has the model")


def check_store(timeout_s: float = 5.0, create: bool = True) -> str:
    """Fail fast, naming the URI, when a tracking server is unreachable (MLflow's own
    client would retry for minutes) or the URI is no store MLflow can open; create a local
    SQLite store once, under a file lock, because processes that start on a new file race
    on its schema migration. ``create=False`` (commands that only read): a missing SQLite
    store is refused, not made."""
    from sqlalchemy.exc import SQLAlchemyError

    uri = tracking_uri()
    try:
        _check_store(uri, timeout_s, create)
    except (MlflowException, SQLAlchemyError, OSError, ValueError, ImportError) as error:
        raise TrackingUnavailable(
            f"{uri} is not a tracking store MLflow can open ({_first_sentence(error)})",
            "point MLFLOW_TRACKING_URI at an MLflow server (http://HOST:5000) or an SQLite file "
            "(sqlite:///path/mlflow.db), or unset it for ./mlflow.db") from None
    return uri


def _first_sentence(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split(". ")[0][:300]


def _check_store(uri: str, timeout_s: float, create: bool) -> None:
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
                pass
        except (OSError, ValueError) as error:
            raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable ({error}); "
                                      "nothing was trained") from None
        # /health answers everyone; an authenticating server refuses the API itself.
        try:
            client().search_experiments(max_results=1)
        except MlflowException as error:
            if error.get_http_status_code() in (401, 403):
                raise TrackingRefused(f"MLflow tracking server {uri} refused the credentials "
                                      f"(HTTP {error.get_http_status_code()}); nothing was trained") from None
            raise
    elif uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        if not create and not database.is_file():
            raise StoreMissing(f"no tracking store at {uri}: nothing was tracked there")
        with exclusive_file_lock(Path(f"{database}.lock")):
            client().search_experiments(max_results=1)
    else:
        client().search_experiments(max_results=1)


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


# Without it MLflow 3.17's UI opens an experiment on its GenAI overview (traces, token
# usage); with it, on the training runs table.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


# MLflow 3.17's UI follows the link's workflow type: without it, a browser that never picked
# "Model training" lands on the GenAI overview whatever the experiment's kind tag says.
_UI_WORKFLOW = "workflowType=machine_learning"


def experiment_link(server: str, experiment: str) -> str:
    """The MLflow UI page of an experiment's runs table."""
    return f"{server.rstrip('/')}/#/experiments/{experiment}?{_UI_WORKFLOW}"


def run_link(server: str, experiment: str, run_id: str, page: str = "") -> str:
    """The MLflow UI page of a run (``page``: e.g. ``artifacts/figures/x.png``)."""
    path = f"runs/{run_id}/{page}".rstrip("/")
    return f"{server.rstrip('/')}/#/experiments/{experiment}/{path}?{_UI_WORKFLOW}"


def experiment_description(name: str) -> str:
    """What the experiment page says of an experiment dae creates."""
    if name == SCORING_EXPERIMENT:
        return (f"**{name}**: batch scoring by the `dae-score` flow. Each run scored one batch with one registered "
                f"version of `{REGISTERED_MODEL}` (tags `dae.model_uri`, `dae.model_version`): its predictions CSV, "
                "and its accuracy where the batch had labels.")
    return (f"**{name}**: training runs of `dae` (`dae run`, `dae compare`, `dae tune`, the `dae-experiment` and "
            "`dae-retrain` deployments): the denoising autoencoder pretrained on MNIST, then the classifier on its "
            "encoder. Each run's description says what ran (preset, changed fields, its Prefect flow run); a "
            "comparison or a tuning is a parent run over its cells or trials: **Group by** `dae.cell` in the runs "
            "table draws one mean curve per cell. Registered versions: the model registry's "
            f"`{REGISTERED_MODEL}`.")


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


def log_params(run_id: str, params: dict[str, Any]) -> None:
    client().log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])


def log_config(run_id: str, config: ExperimentConfig, extra: dict[str, Any] | None = None) -> None:
    log_params(run_id, {**config.flat(), "dataset": config.data.dataset, **(extra or {})})


def log_dataset(run_id: str, name: str, digest: str, source: str, sizes: dict[str, int]) -> None:
    dataset = Dataset(
        name=name, digest=digest[:36], source_type="local",
        source=json.dumps({"uri": source}), profile=json.dumps(sizes),
    )
    client().log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])


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


# torch.export keeps global tracing state: two exports on different threads (cells of an
# in-process comparison) corrupt each other. Exports in one process take turns.
_EXPORT_LOCK = threading.Lock()


@dataclass(frozen=True)
class LoggedClassifier:
    uri: str
    version: str | None  # the registered version, when it was registered


def log_classifier(run_id: str, model, register: bool) -> LoggedClassifier:
    """Log the classifier as a pt2 (torch.export) model with signature and input example,
    and register it. What is logged answers per-class probabilities (``ClassProbabilities``):
    input (N, 784) float32 pixels in [0, 1], output (N, 10) float32 rows summing to 1. pt2
    holds no pickles, so loading it never unpickles anything."""
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from dae_core.model import ClassProbabilities

    served = ClassProbabilities(model.to("cpu", torch.float32)).eval()
    # Two rows: torch.export would specialise a batch of one and refuse other batch sizes.
    example = np.zeros((2, 784), dtype=np.float32)
    with torch.no_grad():
        output = served(torch.from_numpy(example)).numpy()
    run = client().get_run(run_id)
    with _EXPORT_LOCK:
        # Created first in the run's own experiment: left to itself, log_model files a model
        # logged by run id under the thread's active experiment, i.e. "Default" in a task
        # thread, where a worker of the authenticated stack may not write.
        logged_model = mlflow.initialize_logged_model(
            name="classifier", source_run_id=run_id, experiment_id=run.info.experiment_id,
            params={key: str(value) for key, value in run.data.params.items()},
        )
        info = mlflow.pytorch.log_model(
            served, name="classifier", input_example=example, signature=infer_signature(example, output),
            model_id=logged_model.model_id,
            serialization_format="pt2",
            # Stated, not inferred: inference re-imports the model in a subprocess (~10 s).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            registered_model_name=REGISTERED_MODEL if register else None, run_id=run_id,
        )
    version = info.registered_model_version
    return LoggedClassifier(info.model_uri, str(version) if version is not None else None)


# The serving device, pinned: MLflow's loader picks CUDA wherever a GPU is present, and a
# pt2 program exported on the CPU refuses to load there. The classifier is 0.3 M weights:
# on a CPU a batch of 10,000 images takes milliseconds.
SERVING_DEVICE = "cpu"


def load_serving_model(model_uri: str):
    """The registered model as MLflow serves it (pyfunc), on ``SERVING_DEVICE``."""
    return mlflow.pyfunc.load_model(model_uri, model_config={"device": SERVING_DEVICE})


def resolve_model_version(model_uri: str) -> str | None:
    """The registry version behind ``models:/NAME@alias`` or ``models:/NAME/N`` (None for
    other URIs)."""
    if not model_uri.startswith(f"models:/{REGISTERED_MODEL}"):
        return None
    reference = model_uri.removeprefix(f"models:/{REGISTERED_MODEL}")
    if reference.startswith("@"):
        return str(client().get_model_version_by_alias(REGISTERED_MODEL, reference[1:]).version)
    return reference.strip("/") or None


def model_version_of_run(run_id: str) -> str | None:
    """The registered version that a run logged, if any."""
    versions = client().search_model_versions(f"name='{REGISTERED_MODEL}' and run_id='{run_id}'")
    return str(versions[0].version) if versions else None


def run_of_version(version: str) -> str:
    """The training run that logged a registered version."""
    return client().get_model_version(REGISTERED_MODEL, version).run_id


def load_text(run_id: str, artifact_file: str) -> str | None:
    """A run's text artifact, or None where the run has none by that name."""
    try:
        return mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact_file}")
    except (mlflow.exceptions.MlflowException, OSError):
        return None


def alias_version(alias: str) -> str | None:
    try:
        return str(client().get_model_version_by_alias(REGISTERED_MODEL, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def set_alias(alias: str, version: str) -> None:
    client().set_registered_model_alias(REGISTERED_MODEL, alias, version)


def load_registered(version: str):
    """Load one registered version. The pt2 format is a torch.export program: loading it
    runs no unpickler, so a tampered artifact cannot execute code."""
    return mlflow.pytorch.load_model(f"models:/{REGISTERED_MODEL}/{version}")


def _stored_run(run_id: str) -> Run | None:
    """The run ``run_id``, or None when the store does not know it."""
    try:
        return client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None


def reopen_run(run_id: str, tags: dict[str, Any]) -> bool:
    """Mark an unfinished run RUNNING again to continue it; False when the store does not
    know it or it has already finished."""
    run = _stored_run(run_id)
    if run is None or run.info.status == "FINISHED" or run.info.lifecycle_stage != "active":
        return False
    client().update_run(run_id, status="RUNNING")
    set_tags(run_id, tags)
    return True


def finished_run(run_id: str) -> Run | None:
    """The run ``run_id`` if the store holds it FINISHED and not deleted, else None."""
    run = _stored_run(run_id)
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
