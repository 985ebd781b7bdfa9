"""One experiment run's identity: its MLflow run, its folders and its progress artifact."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from adapters import mlflow_runs, mlflow_store
from adapters.state_folders import held_state_folder
from adapters.tags import (
    CELL,
    KILLED,
    RESUMED_BY,
    RESUMED_FROM,
    RESUMED_FROM_MISSING,
    ROLE,
    ROLE_EXPERIMENT,
    WORKER,
    flow_run_tags,
)
from dae_core.checkpoint import write_json
from dae_core.config import ExperimentConfig, closest_preset, run_name
from tasks.data import DatasetRef


@dataclass(frozen=True)
class RunContext:
    """Passed to every task of a run instead of globals."""

    mlflow_run_id: str
    out_dir: str  # this run's outputs: models, figures, evaluation
    # Resumable training state. ``start_tracking`` names the configuration's folder; the
    # run itself trains in the one ``tracked`` holds (that folder, unless a live run has it).
    state_dir: str
    progress_id: str | None
    total_epochs: int
    description: str  # what was run (markdown); the report adds the results


def prefect_flow_run_link() -> str:
    """This flow run as a Prefect UI link where the UI has an address (a Prefect server),
    else its name and id (the temporary server of ``dae run`` ends with the process)."""
    from prefect.settings import PREFECT_UI_URL

    name, run_id = flow_run.name or "", flow_run.id
    if run_id is None:
        return "none"
    ui = PREFECT_UI_URL.value()
    return f"[{name}]({ui.rstrip('/')}/runs/flow-run/{run_id})" if ui else f"`{name}` (`{run_id}`)"


def flow_run_identity() -> str:
    """Who acts when a flow run moves an alias: the flow run, by name and id."""
    return f"flow run {flow_run.name} ({flow_run.id})"


def changed_fields(config: ExperimentConfig) -> tuple[str, str]:
    """The preset ``config`` is closest to, and the fields it changes, in words."""
    preset, changed = closest_preset(config)
    return preset, ", ".join(f"`{key}` = {value!r}" for key, value in changed.items()) or "none"


def describe_run(config: ExperimentConfig, cell: str | None) -> str:
    """The first lines of a run's MLflow description: what was run and where it ran."""
    preset, changes = changed_fields(config)
    return "\n".join([
        f"**{run_name(config, cell)}**: " + (f"cell `{cell}` of a comparison" if cell else f"preset `{preset}`"),
        f"- preset `{preset}`, seed {config.seed}; changed fields: {changes}",
        f"- Prefect flow run: {prefect_flow_run_link()}",
    ])


def state_key(config: ExperimentConfig, dataset: DatasetRef, store: str) -> str:
    """Same configuration (seed included) on the same data, tracked into the same store ->
    same key -> resume. The store is part of it: a rerun against another store starts
    afresh instead of continuing a run that store has never seen."""
    identity = config.model_dump_json() + dataset.digest + store
    return hashlib.sha256(identity.encode()).hexdigest()[:20]


def report_progress(context: RunContext, epochs_done: int) -> None:
    if context.progress_id is not None:
        update_progress_artifact(context.progress_id, 100.0 * epochs_done / context.total_epochs)


def _take_over_state(context: RunContext) -> None:
    """Link this run to the attempt whose training state it inherits. That attempt is not
    alive (it would hold the folder): mark it FAILED, never left RUNNING. An owner that
    the store does not know (the store was deleted or replaced) is noted and ignored."""
    owner_file = Path(context.state_dir) / "owner.json"
    if owner_file.exists():
        previous = json.loads(owner_file.read_text())["mlflow_run_id"]
        if previous != context.mlflow_run_id:
            status = mlflow_runs.run_status(previous)
            if status is None:
                get_run_logger().warning("the saved state's run %s is not in %s; resuming its state without it",
                                         previous, mlflow_store.tracking_uri())
                mlflow_runs.set_tags(context.mlflow_run_id, {RESUMED_FROM_MISSING: previous})
            else:
                if status == "RUNNING":
                    mlflow_runs.set_tags(previous, {KILLED: "true", RESUMED_BY: context.mlflow_run_id})
                    mlflow_runs.end_run(previous, succeeded=False)
                mlflow_runs.set_tags(context.mlflow_run_id, {RESUMED_FROM: previous})
    write_json(owner_file, {"mlflow_run_id": context.mlflow_run_id})


@task(name="check-tracking", retries=0)
def check_tracking() -> str:
    """First step of every flow: the tracking store must answer before anything trains."""
    return mlflow_store.check_store()


@task(name="start-tracking")
def start_tracking(config: ExperimentConfig, dataset: DatasetRef, experiment: str, work_dir: str, machine: str,
                   parent_run_id: str | None = None, run_label: str | None = None) -> RunContext:
    """Create the MLflow run with params, dataset input and Prefect tags (``machine``: the
    worker that trains it)."""
    tags = {**flow_run_tags(), ROLE: ROLE_EXPERIMENT, CELL: run_label or "", WORKER: machine}
    run_id = mlflow_runs.start_run(experiment, flow_run.name or run_name(config, run_label), tags, parent_run_id)
    description = describe_run(config, run_label)
    mlflow_runs.set_description(run_id, description)
    mlflow_runs.log_config(run_id, config)
    sizes = {"train": config.data.train_limit or -1, "test": config.data.test_limit or -1}
    mlflow_runs.log_dataset(run_id, dataset.name, dataset.digest, dataset.raw_dir, sizes)
    total = config.pretrain.epochs + config.classifier.epochs
    progress = create_progress_artifact(0.0, description=f"training epochs done of {total}")
    root = Path(work_dir).resolve()
    context = RunContext(
        mlflow_run_id=run_id,
        out_dir=str(root / "runs" / run_id),
        state_dir=str(root / "state" / state_key(config, dataset, mlflow_store.store_identity())),
        progress_id=str(progress) if progress else None,
        total_epochs=total,
        description=description,
    )
    get_run_logger().info("MLflow run %s at %s", run_id, mlflow_store.tracking_uri())
    return context


@contextlib.contextmanager
def tracked(context: RunContext) -> Iterator[RunContext]:
    """The run's block: holds its resumable-state folder (``held_state_folder``), records
    system metrics, and ends the MLflow run FINISHED or FAILED. Yields the context with
    the held folder. The state is removed only once the whole run succeeded (a failed run
    keeps it for the rerun that resumes)."""
    with (mlflow_runs.ends_run(context.mlflow_run_id), mlflow_runs.system_metrics(context.mlflow_run_id),
          held_state_folder(Path(context.state_dir)) as folder):
        held = dataclasses.replace(context, state_dir=str(folder))
        _take_over_state(held)
        yield held
        shutil.rmtree(folder, ignore_errors=True)
