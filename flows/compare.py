"""``dae-compare``: pretraining optimizer {adam, sgd} x noise {on, off}, plus a baseline
without pretraining, each over several seeds, under one parent MLflow run."""

from __future__ import annotations

import os
from typing import Annotated, Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from dae_core.comparison import CELLS, SGD_PRETRAIN_LR, CellName, cell_config
from dae_core.config import LECTURE_CONFIG, ExperimentConfig
from tasks.comparison import collect_cell, dispatch_cell, report_comparison, run_cell, start_comparison
from tasks.data import default_data_dir, fetch_dataset
from tasks.run import check_tracking, default_work_dir
from tasks.tracking import ends_run


@flow(name="dae-compare")
def dae_compare(
    base: ExperimentConfig = LECTURE_CONFIG,
    seeds: Annotated[int, Field(ge=1, le=50)] = 3,
    cells: list[CellName] | None = None,
    parallel: Annotated[int, Field(ge=1, le=64)] = 1,
    sgd_lr: Annotated[float, Field(gt=0.0, le=10.0)] = SGD_PRETRAIN_LR,
    data_dir: str | None = None,
    download: bool = True,
    experiment_name: str = "dae-mnist",
    work_dir: str | None = None,
    fan_out_deployment: str | None = None,
    cell_timeout_s: Annotated[int, Field(ge=60, le=7 * 24 * 3600)] = 24 * 3600,
) -> dict[str, Any]:
    """Cells run ``parallel`` at a time in this process, each with its share of the cores;
    or, with ``fan_out_deployment`` (e.g. ``dae-experiment/lecture``), each cell is a
    deployment run that any worker of the pool may pick up, and results come back
    through MLflow."""
    check_tracking()
    chosen = cells or list(CELLS)
    seed_list = [base.seed + offset for offset in range(seeds)]
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else base.runtime.threads
    grid = [(cell, cell_config(base, cell, seed, sgd_lr, threads)) for cell in chosen for seed in seed_list]
    data_dir = data_dir or str(default_data_dir())
    work_dir = work_dir or default_work_dir()
    dataset = fetch_dataset(base.data.dataset, data_dir, download)
    parent = start_comparison(base, dataset, chosen, seed_list, experiment_name)
    with ends_run(parent):
        if fan_out_deployment:
            flow_run_ids = [dispatch_cell(fan_out_deployment, config, cell, download, experiment_name, parent)
                            for cell, config in grid]
            records = [collect_cell(run_id, cell, config.seed, experiment_name, cell_timeout_s)
                       for run_id, (cell, config) in zip(flow_run_ids, grid, strict=True)]
        else:
            records = _run_in_process(grid, parallel, data_dir, download, experiment_name, work_dir, parent)
        return report_comparison(records, parent, work_dir)


def _run_in_process(grid, parallel: int, data_dir: str, download: bool, experiment: str, work_dir: str,
                    parent: str) -> list[dict[str, Any]]:
    with ThreadPoolTaskRunner(max_workers=parallel) as runner:
        futures = [
            runner.submit(run_cell, parameters={
                "config": config, "cell": cell, "data_dir": data_dir, "download": download,
                "experiment": experiment, "work_dir": work_dir, "parent_run_id": parent})
            for cell, config in grid
        ]
        return [future.result() for future in futures]
