"""``dae-tune``: for each chosen comparison cell, an Optuna study of its training choices
(by default the pretraining learning rate) on a validation split held out of the training
images, with the same number of trials per cell; the best parameters feed
``dae compare --tuned``."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from dae_core.comparison import SGD_PRETRAIN_LR, CellName, cell_config
from dae_core.config import LECTURE_CONFIG, ExperimentConfig, closest_preset
from dae_core.resumable import held_state_folder
from dae_core.summary import DEFAULT_EXPERIMENT
from dae_core.tuning import Objective, TuningReport, parse_dimension, search_space, study_name
from tasks.data import default_data_dir, fetch_dataset
from tasks.run import check_tracking, default_work_dir
from tasks.tracking import ends_run
from tasks.tuning import open_tuning, report_tuning, study_storage, tune_cell

# Held out of the 60,000 training images when the base config holds none out (a sixth, as
# of a smaller training set).
DEFAULT_VALIDATION_SIZE = 10_000
# The cells whose pretraining optimizer the lecture's verdict is about.
DEFAULT_TUNED_CELLS: list[CellName] = ["adam-noise", "sgd-noise"]


def _flow_run_name() -> str:
    parameters = flow_run.parameters
    base = ExperimentConfig.model_validate(parameters.get("base", LECTURE_CONFIG))
    cells = len(parameters.get("cells") or DEFAULT_TUNED_CELLS)
    return f"tune-{closest_preset(base)[0]}-{cells}cells-{parameters.get('trials', 12)}trials"


@flow(name="dae-tune", flow_run_name=_flow_run_name)
def dae_tune(
    base: ExperimentConfig = LECTURE_CONFIG,
    cells: list[CellName] | None = None,
    trials: Annotated[int, Field(ge=1, le=1000)] = 12,
    objective: Objective = "mse",
    space: list[str] | None = None,
    parallel: Annotated[int, Field(ge=1, le=64)] = 1,
    data_dir: str | None = None,
    download: bool = True,
    experiment_name: str = DEFAULT_EXPERIMENT,
    work_dir: str | None = None,
    storage: str | None = None,
) -> TuningReport:
    """``space``: ``KEY=SPEC`` entries (``pretrain.lr=log:0.1:1000``; default: each cell's
    pretraining rate over a range that suits its optimizer). ``objective``: the validation
    MSE of pretraining or the validation accuracy of the classifier. ``storage``: the
    studies' database URL (default: SQLite beside a local tracking store, else in the
    work folder). Run again with the same arguments, it continues the studies."""
    check_tracking()
    chosen = cells or DEFAULT_TUNED_CELLS
    dimensions = [parse_dimension(text) for text in space or []]
    if base.data.validation_size == 0:
        held_out = DEFAULT_VALIDATION_SIZE if base.data.train_limit is None else max(1, base.data.train_limit // 6)
        base = ExperimentConfig.model_validate(
            {**base.model_dump(), "data": {**base.data.model_dump(), "validation_size": held_out}})
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else base.runtime.threads
    configs = {cell: cell_config(base, cell, base.seed, SGD_PRETRAIN_LR, threads) for cell in chosen}
    spaces = {cell: search_space(config, dimensions, objective) for cell, config in configs.items()}
    data_dir = data_dir or str(default_data_dir())
    work_dir = work_dir or default_work_dir()
    dataset = fetch_dataset(base.data.dataset, data_dir, download)
    storage = study_storage(work_dir, storage or os.environ.get("DAE_TUNING_STORAGE"))
    names = [study_name(cell, configs[cell], spaces[cell], objective, dataset.digest) for cell in chosen]
    key = hashlib.sha256(f"{names}{trials}{experiment_name}".encode()).hexdigest()[:20]
    with held_state_folder(Path(work_dir).resolve() / "state" / f"tune-{key}") as record_dir:
        parent = open_tuning(base, dataset, chosen, trials, objective, experiment_name, key, str(record_dir))
        with ends_run(parent):
            results = [tune_cell(cell, configs[cell], spaces[cell], objective, trials, parallel, dataset, storage,
                                 parent, experiment_name) for cell in chosen]
            report = report_tuning(results, storage, parent, work_dir)
        shutil.rmtree(record_dir, ignore_errors=True)
        return report

