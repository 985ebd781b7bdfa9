"""Tasks of the comparison flow: the parent MLflow run, reading a cell that ran
elsewhere back from MLflow, and the report. Starting and waiting for the cells' flow
runs is the flow's business (flows/compare.py)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from adapters import mlflow_runs, progress, run_search
from adapters.tags import COMPARISON_KEY, DIVERGED, KILLED, ROLE, ROLE_COMPARISON, flow_run_tags, resumed_tags
from dae_core import comparison, figures
from dae_core.checkpoint import write_json
from dae_core.comparison import CellRun, CellRunRef, ComparisonReport, DivergedRun
from dae_core.config import ExperimentConfig
from tasks.data import DatasetRef
from tasks.run import prefect_flow_run_link


def _grid_line(cells: list[str], seeds: list[int]) -> str:
    return (f"**Comparison** of {len(cells)} cells ({', '.join(f'`{cell}`' for cell in cells)}) over seeds "
            f"{', '.join(map(str, seeds))}; each cell and seed is a child run named `<cell>-seed<N>`.\n"
            f"- Prefect flow run: {prefect_flow_run_link()}")



@dataclass(frozen=True)
class OpenedComparison:
    parent_run_id: str
    finished: list[CellRun]  # cells an interrupted run of the same grid finished: not run again
    resumed: bool


def _start_parent(base: ExperimentConfig, dataset: DatasetRef, cells: list[str], seeds: list[int],
                  experiment: str, key: str, extra_tags: dict[str, Any]) -> str:
    tags = {
        **{name: str(value) for name, value in extra_tags.items()},
        ROLE: ROLE_COMPARISON,
        COMPARISON_KEY: key,
        **flow_run_tags(),
    }
    run_id = mlflow_runs.start_run(experiment, flow_run.name or "compare", tags)
    mlflow_runs.set_description(run_id, _grid_line(cells, seeds))
    mlflow_runs.log_config(run_id, base, {"compare.cells": ",".join(cells),
                                       "compare.seeds": ",".join(map(str, seeds))})
    mlflow_runs.log_dataset(run_id, dataset.name, dataset.digest, dataset.raw_dir, {})
    return run_id


@task(name="open-comparison")
def open_comparison(base: ExperimentConfig, dataset: DatasetRef, cells: list[str], seeds: list[int],
                    experiment: str, key: str, record_dir: str, fresh: bool,
                    cells_in_process: bool, tags: dict[str, Any] | None = None) -> OpenedComparison:
    """The parent MLflow run: the one an interrupted run of this grid left (its record in
    ``record_dir``), with the cells it finished, unless ``fresh``; else a new one, with
    ``tags`` (e.g. where its tuned settings came from). Cells
    that ran in the interrupted process died with it: their runs end FAILED (cells sent to
    the work pool may still be running, and are left to their workers)."""
    record = Path(record_dir) / "parent.json"
    logger = get_run_logger()
    if not fresh and record.exists():
        previous = json.loads(record.read_text())["mlflow_run_id"]
        if mlflow_runs.reopen_run(previous, resumed_tags()):
            if cells_in_process:
                run_search.fail_running_children(previous, {KILLED: "true"})
            done = run_search.finished_children(previous)
            finished = [CellRun(cell, seed, run_search.summary_from_run(run_id))
                        for (cell, seed), run_id in done.items() if cell in cells and seed in seeds]
            logger.info("resuming comparison %s: %d cell runs already finished", previous, len(finished))
            if finished:
                progress.notify(progress.ProgressEvent(progress.Phase.REUSED, len(finished), len(finished)))
            return OpenedComparison(previous, finished, resumed=True)
        logger.info("the interrupted comparison %s cannot be continued (finished, deleted or in another "
                    "store): starting a new one", previous)
    parent = _start_parent(base, dataset, cells, seeds, experiment, key, tags or {})
    write_json(record, {"mlflow_run_id": parent})
    return OpenedComparison(parent, [], resumed=False)


@task(name="report-comparison")
def report_comparison(records: list[CellRun], parent_run_id: str, work_dir: str, reused: int,
                      diverged: list[DivergedRun]) -> ComparisonReport:
    rows = comparison.comparison_table(records)
    verdicts = comparison.findings(rows, diverged)
    table_markdown = comparison.markdown_table(rows)
    out = Path(work_dir).resolve() / "comparisons" / parent_run_id
    frame = pd.DataFrame([row.model_dump() for row in rows])
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "comparison.csv"
    frame.to_csv(csv_path, index=False)
    palette = list(comparison.CELLS)
    pictures = [
        figures.overlay_bands(comparison.curve_bands(records, lambda s: s.pretrain.mse),
                              out / "pretrain_mse_by_cell.png", "train reconstruction MSE",
                              "Pretraining MSE (mean +- std over seeds)", log_scale=True, palette=palette),
        figures.overlay_bands(comparison.curve_bands(records, lambda s: s.classifier.test_accuracy),
                              out / "test_accuracy_by_cell.png", "test accuracy (%)",
                              "Classifier test accuracy (mean +- std over seeds)", palette=palette),
    ]
    findings_markdown = "\n".join(["## Verdicts on the lecture's claims", *verdicts])
    result = ComparisonReport(
        rows=rows, table_markdown=table_markdown, findings_markdown=findings_markdown, mlflow_run_id=parent_run_id,
        runs=[CellRunRef(cell=r.cell, seed=r.seed, mlflow_run_id=r.summary.mlflow_run_id) for r in records],
        reused=reused, diverged=diverged)
    write_json(out / "comparison.json", result.model_dump())
    if diverged:
        mlflow_runs.set_tags(parent_run_id, {DIVERGED: comparison.diverged_names(diverged)})

    mlflow_runs.log_table(parent_run_id, frame, "tables/comparison.json")
    mlflow_runs.log_files(parent_run_id, [csv_path, out / "comparison.json", *pictures], "comparison")
    finals = {f"compare/{row.cell}/{row.metric}_mean": row.mean for row in rows if not math.isnan(row.mean)}
    mlflow_runs.log_metrics(parent_run_id, finals)
    create_table_artifact([{k: (None if isinstance(v, float) and math.isnan(v) else v)
                            for k, v in row.model_dump().items()} for row in rows],
                          key="dae-comparison", description="Cells x metrics over seeds")
    cells, seeds = list(dict.fromkeys(r.cell for r in records)), sorted({r.seed for r in records})
    mlflow_runs.set_description(parent_run_id, f"{_grid_line(cells, seeds)}\n\n{table_markdown}\n\n{findings_markdown}")
    create_markdown_artifact(f"# DAE comparison\n\n{table_markdown}\n\n{findings_markdown}\n\n"
                             f"MLflow parent run: `{parent_run_id}`", key="dae-comparison-report")
    get_run_logger().info("comparison written to %s", out)
    return result


@task(name="read-cell")
def read_cell(flow_run_id: str, cell: str, seed: int, experiment: str) -> CellRun:
    """The summary of a cell's finished flow run, rebuilt from the MLflow run it created."""
    run_id = run_search.run_of_flow_run(flow_run_id, experiment)
    if run_id is None:
        raise RuntimeError(f"cell {cell} seed {seed}: flow run {flow_run_id} left no MLflow run")
    return CellRun(cell, seed, run_search.summary_from_run(run_id))
