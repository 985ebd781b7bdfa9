"""``dae-compare``: pretraining optimizer {adam, sgd} x noise {on, off}, plus a baseline
without pretraining, each over several seeds, under one parent MLflow run."""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import Field

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from dae_core.comparison import CELLS, SGD_PRETRAIN_LR, CellName, cell_config
from dae_core.config import ExperimentConfig
from tasks.comparison import report_comparison, run_cell, start_comparison
from tasks.data import default_data_dir, fetch_dataset
from tasks.run import default_work_dir
from tasks.tracking import end_run


@flow(name="dae-compare")
def dae_compare(
    base: ExperimentConfig = ExperimentConfig(),
    seeds: Annotated[int, Field(ge=1, le=50)] = 3,
    cells: list[CellName] | None = None,
    parallel: Annotated[int, Field(ge=1, le=64)] = 1,
    sgd_lr: Annotated[float, Field(gt=0.0, le=10.0)] = SGD_PRETRAIN_LR,
    data_dir: str | None = None,
    download: bool = True,
    experiment_name: str = "dae-mnist",
    work_dir: str | None = None,
) -> dict[str, Any]:
    """Cells run ``parallel`` at a time in this process, each with its share of the cores."""
    chosen = cells or list(CELLS)
    seed_list = [base.seed + offset for offset in range(seeds)]
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else base.runtime.threads
    grid = [(cell, cell_config(base, cell, seed, sgd_lr, threads)) for cell in chosen for seed in seed_list]
    data_dir = data_dir or str(default_data_dir())
    work_dir = work_dir or default_work_dir()
    dataset = fetch_dataset(base.data.dataset, data_dir, download)
    parent = start_comparison(base, dataset, chosen, seed_list, experiment_name)
    try:
        with ThreadPoolTaskRunner(max_workers=parallel) as runner:
            futures = [
                runner.submit(run_cell, parameters={
                    "config": config, "cell": cell, "data_dir": data_dir, "download": download,
                    "experiment": experiment_name, "work_dir": work_dir, "parent_run_id": parent})
                for cell, config in grid
            ]
            records = [future.result() for future in futures]
        result = report_comparison(records, parent, work_dir)
    except BaseException:
        end_run(parent, succeeded=False)
        raise
    end_run(parent, succeeded=True)
    return result
