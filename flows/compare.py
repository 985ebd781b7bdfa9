"""``dae-compare``: pretraining optimizer {adam, sgd} x noise {on, off}, plus a baseline
without pretraining, each over several seeds, under one parent MLflow run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from adapters.mlflow_runs import ends_run
from adapters.settings import Settings
from adapters.state_folders import held_state_folder
from adapters.tags import CELL_OVERRIDE, TUNED_FROM, TUNED_POINT, tuned_tags
from dae_core.comparison import (
    DEFAULT_CELLS,
    MAX_PARALLEL,
    MAX_SEEDS,
    SGD_PRETRAIN_LR,
    CellName,
    CellRun,
    ComparisonReport,
    DivergedRun,
    cell_config,
    grid_key,
)
from dae_core.config import (
    LECTURE_CONFIG,
    ConfigError,
    ExperimentConfig,
    closest_preset,
    deep_merge,
    flat_fields,
    nested_fields,
)
from dae_core.runtime import thread_share
from dae_core.summary import DEFAULT_EXPERIMENT
from dae_core.train import TrainingDiverged
from flows.dispatch import dispatch, run_cell, wait_for_cell
from flows.experiment import cell_parameters
from tasks.comparison import open_comparison, read_cell, report_comparison
from tasks.data import fetch_dataset
from tasks.run import check_tracking
from tasks.tuning import TunedSettings, read_tuning

Grid = list[tuple[str, ExperimentConfig]]


def _flow_run_name() -> str:
    """``compare-<preset>-<K>cells-<N>seeds``; the parent MLflow run carries the same name."""
    parameters = flow_run.parameters
    base = ExperimentConfig.model_validate(parameters.get("base", LECTURE_CONFIG))
    cells = len(parameters.get("cells") or DEFAULT_CELLS)
    return f"compare-{closest_preset(base)[0]}-{cells}cells-{parameters.get('seeds', 3)}seeds"


@flow(name="dae-compare", flow_run_name=_flow_run_name)
def dae_compare(
    base: ExperimentConfig = LECTURE_CONFIG,
    seeds: Annotated[int, Field(ge=1, le=MAX_SEEDS)] = 3,
    cells: list[CellName] | None = None,
    parallel: Annotated[int, Field(ge=1, le=MAX_PARALLEL)] = 1,
    sgd_lr: Annotated[float, Field(gt=0.0, le=1000.0)] = SGD_PRETRAIN_LR,
    data_dir: str | None = None,
    download: bool = True,
    experiment_name: str = DEFAULT_EXPERIMENT,
    work_dir: str | None = None,
    fan_out_deployment: str | None = None,
    cell_timeout_s: Annotated[int, Field(ge=60, le=7 * 24 * 3600)] = 24 * 3600,
    fresh: bool = False,
    tuned_run_id: str | None = None,
    tuned_point: str | None = None,
    cell_overrides: dict[CellName, dict[str, Any]] | None = None,
) -> ComparisonReport:
    """Cells run ``parallel`` at a time in this process, each with its share of the cores;
    or, with ``fan_out_deployment`` (e.g. ``dae-experiment/lecture``), each cell is a
    deployment run that any worker of the pool may pick up, and results come back
    through MLflow. Run again with the same arguments after an interruption, it continues
    the interrupted comparison: finished cells are reused, the interrupted one resumes
    from its last epoch; ``fresh`` starts a new grid instead. ``tuned_run_id``: a
    ``dae-tune`` run whose best parameters replace the fixed settings of the cells it tuned
    (recorded on the parent run); ``tuned_point``: of a tuning of several objectives, the
    point of each cell's front to take instead (``knee``, ``best-noisy-accuracy``,
    ``noisy-within:0.5``: dae_core/pareto.py), recorded too. ``cell_overrides``: config fields of single cells (nested,
    ``{"no-pretraining": {"classifier": {"lr": 0.5}}}``), over ``base`` and the tuned ones."""
    check_tracking()
    chosen = cells or list(DEFAULT_CELLS)
    seed_list = [base.seed + offset for offset in range(seeds)]
    threads = thread_share(parallel, base.runtime.threads)
    if tuned_point and not tuned_run_id:
        raise ConfigError(f"--point {tuned_point}: a point of whose fronts?", "add --tuned RUN_ID of a `dae tune` run")
    from_tuning = read_tuning(tuned_run_id, tuned_point) if tuned_run_id else TunedSettings({}, None)
    tuned = from_tuning.params
    overridden = cell_overrides or {}
    changes = {cell: deep_merge(nested_fields(tuned.get(cell, {})), overridden.get(cell, {})) for cell in chosen}
    grid = [(cell, cell_config(base, cell, seed, sgd_lr, threads, changes[cell] or None))
            for cell in chosen for seed in seed_list]
    settings_tags = {TUNED_FROM: tuned_run_id or "", **({TUNED_POINT: from_tuning.point} if from_tuning.point else {}),
                     **tuned_tags({cell: tuned[cell] for cell in chosen if cell in tuned}),
                     **{f"{CELL_OVERRIDE}.{cell}.{key}": value for cell in chosen if cell in overridden
                        for key, value in flat_fields(overridden[cell]).items()}}
    settings = Settings.from_env()
    data_dir = data_dir or str(settings.data_dir)
    work_dir = work_dir or str(settings.work_dir)
    dataset = fetch_dataset(base.data.dataset, data_dir, download)
    key = grid_key(grid, dataset.digest, f"{experiment_name}|{fan_out_deployment or 'in-process'}")
    # The record of this grid's parent run, held while this comparison is alive: an
    # identical comparison started meanwhile gets a folder (and a parent run) of its own.
    with held_state_folder(Path(work_dir).resolve() / "state" / f"compare-{key}") as record_dir:
        opened = open_comparison(base, dataset, chosen, seed_list, experiment_name, key, str(record_dir), fresh,
                                 cells_in_process=not fan_out_deployment, tags=settings_tags)
        parent = opened.parent_run_id
        with ends_run(parent):
            finished = {(record.cell, record.seed): record for record in opened.finished}
            remaining = [(cell, config) for cell, config in grid if (cell, config.seed) not in finished]
            if fan_out_deployment:
                new = _run_on_work_pool(remaining, fan_out_deployment, download, experiment_name, parent,
                                        cell_timeout_s)
                diverged = []
            else:
                new, diverged = _run_in_process(remaining, parallel, data_dir, download, experiment_name, work_dir,
                                                parent)
            report = report_comparison(_in_grid_order(grid, [*opened.finished, *new]), parent, work_dir,
                                       reused=len(finished), diverged=diverged)
        shutil.rmtree(record_dir, ignore_errors=True)
        return report


def _in_grid_order(grid: Grid, records: list[CellRun]) -> list[CellRun]:
    by_cell = {(record.cell, record.seed): record for record in records}
    return [by_cell[(cell, config.seed)] for cell, config in grid if (cell, config.seed) in by_cell]


def _run_in_process(grid: Grid, parallel: int, data_dir: str, download: bool, experiment: str, work_dir: str,
                    parent: str) -> tuple[list[CellRun], list[DivergedRun]]:
    """The grid's cell runs, and those that diverged: a rate at the edge of stability (as a
    tuned one can be) fails some seeds, and the rest of a long grid is still worth having."""
    finished, diverged = [], []
    with ThreadPoolTaskRunner(max_workers=parallel) as runner:
        futures = [
            runner.submit(run_cell, parameters={
                "config": config, "cell": cell, "data_dir": data_dir, "download": download,
                "experiment": experiment, "work_dir": work_dir, "parent_run_id": parent})
            for cell, config in grid
        ]
        for (cell, config), future in zip(grid, futures, strict=True):
            try:
                finished.append(future.result())
            except TrainingDiverged as error:
                diverged.append(DivergedRun(cell=cell, seed=config.seed, detail=error.message))
    return finished, diverged


def _run_on_work_pool(grid: Grid, deployment_name: str, download: bool, experiment: str, parent: str,
                      timeout_s: int) -> list[CellRun]:
    flow_run_ids = [dispatch(deployment_name, cell_parameters(config, cell, parent, download, experiment),
                             f"{cell} seed {config.seed}")
                    for cell, config in grid]
    records = []
    for flow_run_id, (cell, config) in zip(flow_run_ids, grid, strict=True):
        wait_for_cell(flow_run_id, cell, config.seed, timeout_s)
        records.append(read_cell(flow_run_id, cell, config.seed, experiment))
    return records
