"""``dae-tune``: for each chosen comparison cell, an Optuna study of its training choices
(by default the pretraining learning rate) on a validation split held out of the training
images, with the same number of trials per cell; the best parameters feed
``dae compare --tuned``."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from adapters import studies
from adapters.mlflow_runs import ends_run
from adapters.settings import Settings
from adapters.state_folders import held_state_folder
from dae_core.comparison import MAX_PARALLEL, MAX_TRIALS, CellName
from dae_core.config import LECTURE_CONFIG, ConfigError, ExperimentConfig, closest_preset
from dae_core.runtime import thread_share
from dae_core.summary import DEFAULT_EXPERIMENT
from dae_core.tuning import DEFAULT_TUNED_CELLS, Objective, TuningReport, plan_searches, with_validation_split
from flows.dispatch import await_workers, dispatch
from tasks.data import fetch_dataset
from tasks.run import check_tracking
from tasks.tuning import (
    TuningPlace,
    fail_killed_trials,
    finished_tuning,
    open_tuning,
    read_studies,
    report_tuning,
    tune_cell,
)


def _flow_run_name() -> str:
    parameters = flow_run.parameters
    base = ExperimentConfig.model_validate(parameters.get("base", LECTURE_CONFIG))
    cells = len(parameters.get("cells") or DEFAULT_TUNED_CELLS)
    name = f"tune-{closest_preset(base)[0]}-{cells}cells-{parameters.get('trials', 12)}trials"
    return f"{name}-worker{parameters['worker']}" if parameters.get("worker") else name


@flow(name="dae-tune", flow_run_name=_flow_run_name)
def dae_tune(
    base: ExperimentConfig = LECTURE_CONFIG,
    cells: list[CellName] | None = None,
    trials: Annotated[int, Field(ge=1, le=MAX_TRIALS)] = 12,
    objective: Objective | list[Objective] = "mse",
    space: list[str] | None = None,
    parallel: Annotated[int, Field(ge=1, le=MAX_PARALLEL)] = 1,
    data_dir: str | None = None,
    download: bool = True,
    experiment_name: str = DEFAULT_EXPERIMENT,
    work_dir: str | None = None,
    storage: str | None = None,
    fan_out_deployment: str | None = None,
    worker_timeout_s: Annotated[int, Field(ge=60, le=7 * 24 * 3600)] = 24 * 3600,
    parent_run_id: str | None = None,
    worker: Annotated[int, Field(ge=0, le=64)] = 0,
) -> TuningReport:
    """``space``: ``KEY=SPEC`` entries (``pretrain.lr=log:0.1:1000``; ``pretrain.lr=default``: the
    range that suits each cell's optimizer; default: that pretraining rate alone). ``objective``: the validation
    MSE of pretraining, the validation accuracy of the classifier, or its accuracy on noisy
    validation digits (``noisy-accuracy``); several: a multi-objective study per cell, whose
    Pareto front the report draws and ``dae compare --tuned RUN --point NAME`` takes a point
    of (a cell without pretraining leaves the MSE out). ``storage``: the
    studies' database URL (default: ``DAE_TUNING_STORAGE``, else SQLite beside a local
    tracking store, else in the work folder). Run again with the same arguments, it
    continues the studies; once they hold their trials, it trains nothing and reports the
    tuning that ran them (``reused``). ``fan_out_deployment`` (e.g. ``dae-tune/optimizers``): the
    trials run in ``parallel`` runs of that deployment, which any worker of its pool may
    pick up, sharing the studies (a database every worker reaches, not SQLite).
    ``parent_run_id`` and ``worker`` are set by such a dispatcher for its workers: they run
    trials under its MLflow run and report nothing of their own."""
    check_tracking()
    chosen = cells or DEFAULT_TUNED_CELLS
    objectives = tuple(dict.fromkeys([objective] if isinstance(objective, str) else objective))
    if not objectives:
        raise ConfigError("objective: name at least one of mse, accuracy, noisy-accuracy")
    base = with_validation_split(base)
    # In one process, parallel trials share its cores; fanned out, each worker runs one at a time.
    in_process = fan_out_deployment is None and worker == 0
    threads = thread_share(parallel, base.runtime.threads) if in_process else base.runtime.threads
    settings = Settings.from_env()
    work_dir = work_dir or str(settings.work_dir)
    storage = studies.storage_url(work_dir, storage or settings.tuning_storage)
    if fan_out_deployment and storage.startswith("sqlite"):
        raise ConfigError(f"--fan-out: the studies are in {storage}, a file of this machine that the workers "
                          "cannot share", "--storage postgresql://USER@HOST/DATABASE (or DAE_TUNING_STORAGE), "
                          "a database this machine and every worker reach")
    dataset = fetch_dataset(base.data.dataset, data_dir or str(settings.data_dir), download)
    searches = plan_searches(base, chosen, space or [], objectives, threads, dataset.digest, experiment_name)
    if parent_run_id:
        # A fanned-out worker: trials only, one at a time, under the dispatcher's run.
        place = TuningPlace(dataset, storage, parent_run_id, experiment_name, settings.worker_name)
        results = [tune_cell(search, trials, 1, place, worker) for search in searches]
        return TuningReport(cells={result.cell: result for result in results}, mlflow_run_id=parent_run_id)
    if earlier := finished_tuning(searches, storage, trials):
        get_run_logger().info("the studies already hold %d trials per cell: tuning %s ran them", trials, earlier)
        results = read_studies(searches, storage, trials)
        return TuningReport(cells={result.cell: result for result in results}, mlflow_run_id=earlier, reused=True)
    names = [search.study for search in searches]
    key = hashlib.sha256(f"{names}{trials}{experiment_name}".encode()).hexdigest()[:20]
    with held_state_folder(Path(work_dir).resolve() / "state" / f"tune-{key}") as record_dir:
        parent = open_tuning(base, dataset, chosen, trials, objectives, experiment_name, key, str(record_dir),
                             trials_in_process=in_process)
        with ends_run(parent):
            studies.create_studies(searches, storage, parent)
            if fan_out_deployment:
                shared = {"base": base, "cells": chosen, "trials": trials, "objective": objective, "space": space,
                          "download": download, "experiment_name": experiment_name,
                          "storage": studies.shareable(storage), "parent_run_id": parent}
                workers = {dispatch(fan_out_deployment, {**shared, "worker": index}, f"worker {index}"): index
                           for index in range(1, parallel + 1)}
                await_workers(workers, names, storage, trials, worker_timeout_s)
                fail_killed_trials(parent)
                results = read_studies(searches, storage, trials)
            else:
                place = TuningPlace(dataset, storage, parent, experiment_name, settings.worker_name)
                results = [tune_cell(search, trials, parallel, place) for search in searches]
            report = report_tuning(results, storage, parent, work_dir)
        shutil.rmtree(record_dir, ignore_errors=True)
        return report
