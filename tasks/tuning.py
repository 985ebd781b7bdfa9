"""Tasks of the tuning flow: the parent MLflow run, each cell's study run trial by trial
(each trial a task run in the Prefect UI and a child MLflow run), and the report (figures,
JSON, tags) on the parent. The Optuna glue is ``adapters/studies.py``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Completed, State

from adapters import mlflow_runs, progress, run_search, studies
from adapters.mlflow_store import tracking_uri
from adapters.tags import (
    CELL,
    FAILURE_DETAIL,
    FLOW_RUN_ID,
    KILLED,
    ROLE,
    ROLE_TRIAL,
    ROLE_TUNING,
    SCORED,
    STUDY,
    TRIAL,
    TRIAL_STATE,
    TUNING_KEY,
    WORKER,
    flow_run_tags,
    resumed_tags,
    tuned_params,
    tuned_tags,
)
from dae_core import figures, tuning
from dae_core.checkpoint import write_json
from dae_core.config import ConfigError, ExperimentConfig
from dae_core.pareto import DIRECTIONS, KNEE, Objective, check_point
from dae_core.tuning import CellSearch, CellTuning, TrialDiverged, TuningReport, front_table, objectives_label
from tasks.data import DatasetRef


@dataclass(frozen=True)
class TuningPlace:
    """What every trial of one tuning shares: its data, the studies' database, the parent
    MLflow run its trials are filed under, the experiment, and the machine that trains."""

    dataset: DatasetRef
    storage: str
    parent_run_id: str
    experiment: str
    machine: str


@task(name="open-tuning")
def open_tuning(base: ExperimentConfig, dataset: DatasetRef, cells: list[str], trials: int,
                objectives: tuple[Objective, ...], experiment: str, key: str, record_dir: str,
                trials_in_process: bool = True) -> str:
    """The parent MLflow run: the one an interrupted run of this tuning left (recorded in
    ``record_dir``), whose unfinished trial runs died with it if they ran in its process
    (fanned-out ones may still be running, and are left to their workers), or a new one."""
    record = Path(record_dir) / "parent.json"
    if record.exists():
        previous = json.loads(record.read_text())["mlflow_run_id"]
        if mlflow_runs.reopen_run(previous, resumed_tags()):
            if trials_in_process:
                fail_killed_trials(previous)
            get_run_logger().info("continuing the interrupted tuning %s", previous)
            return previous
    tags = {ROLE: ROLE_TUNING, TUNING_KEY: key, **flow_run_tags()}
    parent = mlflow_runs.start_run(experiment, flow_run.name or "tune", tags)
    label = objectives_label(objectives)
    mlflow_runs.log_config(parent, base, {"tune.cells": ",".join(cells), "tune.trials": trials,
                                          "tune.objective": label})
    mlflow_runs.log_dataset(parent, dataset.name, dataset.digest, dataset.raw_dir, {})
    mlflow_runs.set_description(parent, f"**Tuning** of {', '.join(f'`{c}`' for c in cells)}: {trials} trials "
                                        f"each, objective validation {label}; each trial is a child run "
                                        "`<cell>-trial<N>`.")
    write_json(record, {"mlflow_run_id": parent})
    return parent


def fail_killed_trials(parent_run_id: str) -> list[str]:
    """End FAILED the trial runs still RUNNING under a tuning whose trials have all stopped
    (their process was killed); returns their ids."""
    return run_search.fail_running_children(parent_run_id, {KILLED: "true", TRIAL_STATE: "killed"})


def finished_tuning(searches: list[CellSearch], storage: str, trials: int) -> str | None:
    """The MLflow run of the tuning that already ran these studies with a budget of
    ``trials`` each, if one did and its run is there, finished; else None. (A study may
    hold more than its budget: workers sharing it finish together; a tuning with a larger
    budget is another one.)"""
    parent = studies.tuning_that_filled([search.study for search in searches], storage, trials)
    run = run_search.finished_run(parent) if parent else None
    return parent if run is not None and run.data.params.get("tune.trials") == str(trials) else None


# Each epoch's validation value of a trial, by what it measures.
_EPOCH_METRIC = {"mse": "pretrain/val_mse", "accuracy": "classifier/val_accuracy"}


def _value_metric(objective: Objective) -> str:
    """A trial's final value of one objective, e.g. ``tune/noisy_accuracy``."""
    return f"tune/{objective.replace('-', '_')}"


@task(name="trial", task_run_name="{search.cell} trial {number}", cache_policy=NO_CACHE)
def run_trial(search: CellSearch, number: int, trial, place: TuningPlace, prefect_flow_run: str) -> State:
    """One trial: its point drawn, trained on the validation split as a child MLflow run
    with its parameters, per-epoch values and state; the Prefect state says how it ended
    (Completed, or Completed named Pruned or Diverged). ``trial`` is Optuna's, asked by
    ``tune_cell``, which tells the study the end this returns."""
    params = tuning.suggest(trial, search.space)
    config = tuning.with_params(search.config, params)
    run_id = mlflow_runs.start_run(place.experiment, f"{search.cell}-trial{number}", {
        ROLE: ROLE_TRIAL, CELL: search.cell, STUDY: search.study, TRIAL: str(number), WORKER: place.machine,
        FLOW_RUN_ID: prefect_flow_run}, parent_run_id=place.parent_run_id)
    mlflow_runs.log_config(run_id, config)

    def report(measured: Objective, epoch: int, value: float) -> None:
        mlflow_runs.log_metrics(run_id, {_EPOCH_METRIC[measured]: value}, step=epoch)
        if search.objectives == (measured,):  # the pruner watches a study of one objective
            studies.report(trial, epoch, value)

    try:
        scored = tuning.train_trial(config, Path(place.dataset.raw_dir), search.objectives, report)
    except studies.TrialPruned as pruned:
        # FINISHED: stopping a trial that fell behind is the search working, not a failure.
        mlflow_runs.set_tags(run_id, {TRIAL_STATE: "pruned"})
        mlflow_runs.end_run(run_id, succeeded=True)
        return Completed(name="Pruned", message=str(pruned), data=studies.TrialEnd("pruned"))
    except TrialDiverged as error:
        # Pruned for the sampler (a region to avoid), FAILED in MLflow with the reason.
        mlflow_runs.set_tags(run_id, {TRIAL_STATE: "diverged", FAILURE_DETAIL: str(error)[:500]})
        mlflow_runs.end_run(run_id, succeeded=False)
        return Completed(name="Diverged", message=str(error)[:500], data=studies.TrialEnd("diverged"))
    except BaseException:
        mlflow_runs.end_run(run_id, succeeded=False)
        raise
    values = tuple(scored[objective] for objective in search.objectives)
    one = {"tune/value": values[0]} if len(values) == 1 else {}
    mlflow_runs.log_metrics(run_id, {**one, **{_value_metric(o): scored[o] for o in search.objectives}})
    mlflow_runs.set_tags(run_id, {TRIAL_STATE: "complete"})
    mlflow_runs.end_run(run_id, succeeded=True)
    return Completed(message=f"validation {tuning.values_text(scored)}",
                     data=studies.TrialEnd("complete", values))


@task(name="tune-cell", task_run_name="tune {search.cell}")
def tune_cell(search: CellSearch, trials: int, parallel: int, place: TuningPlace, worker: int = 0) -> CellTuning:
    """Run the cell's study until ``trials`` trials are complete or pruned (a rerun counts
    those already in the study, and so do other processes sharing it), ``parallel`` trial
    tasks at a time. ``worker`` > 0: one of several deployment runs sharing the study,
    which its dispatcher created."""
    study = studies.open_study(search.study, place.storage, search.config, search.objectives, worker)
    earlier = min(trials, studies.counted(study))
    remaining = trials - earlier
    if earlier:
        progress.notify(progress.ProgressEvent(progress.Phase.REUSED, earlier, earlier))
    if remaining > 0:
        get_run_logger().info("study %s: %d trials to run (%d already done)", search.study, remaining, earlier)
    prefect_flow_run, started = str(flow_run.id or ""), 0
    running: dict[PrefectFuture, object] = {}
    try:
        while True:
            # The budget counts every process sharing the study (a second `dae tune` with the
            # same --storage, fanned-out workers), not just this one's trials.
            while (len(running) < parallel and started < remaining
                   and studies.counted(study) + len(running) < trials):
                trial = studies.ask(study)
                running[run_trial.submit(search, trial.number, trial, place, prefect_flow_run)] = trial
                started += 1
            if not running:
                break
            done = next(as_completed(list(running)))
            trial = running.pop(done)
            try:
                end = done.result()
            except BaseException:
                studies.tell(study, trial, studies.TrialEnd("failed"))
                raise
            studies.tell(study, trial, end)
            progress.notify(progress.ProgressEvent(progress.Phase.TRIAL, trial.number + 1, trials))
    finally:
        for future in running:  # an error ended the study: the trials in flight end with it
            future.wait()
    return studies.cell_result(search.cell, study, search.objectives, trials)


@task(name="read-studies")
def read_studies(searches: list[CellSearch], storage: str, trials: int) -> list[CellTuning]:
    """Each cell's result, read from its study (after a fan-out's workers have ended)."""
    return studies.read_results(searches, storage, trials)


def _mark_unscored(result: CellTuning, study, trial_runs: list) -> int:
    """Tag the runs (among the tuning's ``trial_runs``) of the cell's trials beyond its first
    ``result.trials`` counted ones; returns how many."""
    beyond = studies.beyond_budget(study, result.trials)
    runs = [run for run in trial_runs
            if run.data.tags.get(STUDY) == result.study and run.data.tags.get(TRIAL) in beyond]
    for run in runs:
        mlflow_runs.set_tags(run.info.run_id, {SCORED: "false"})
    return len(runs)


def _draw(result: CellTuning, study, out: Path) -> list[Path]:
    """The cell's optimization history and its slices (each searched field against the
    value); with several objectives, its front and a slices figure per objective."""
    objectives = result.objectives
    drawn = studies.points(study, objectives)
    if len(objectives) == 1:
        minimize = DIRECTIONS[result.objective] == "minimize"
        values = drawn.values[result.objective]
        return [
            figures.tuning_history(drawn.numbers, values, minimize, result.objective,
                                   out / f"{result.cell}-history.png",
                                   f"{result.cell}: optimization history (validation {result.objective})"),
            figures.tuning_slices(drawn.params, drawn.log_scale, drawn.numbers, values, result.objective,
                                  out / f"{result.cell}-slice.png",
                                  f"{result.cell}: slice (validation {result.objective})"),
        ]
    x, y = objectives[:2]
    named: dict[tuple[float, float], list[str]] = {}
    for name in (*(f"best-{objective}" for objective in objectives), KNEE):
        point = result.point(name)
        named.setdefault((point.values[x], point.values[y]), []).append(name)
    front = figures.tuning_front(
        (drawn.values[x], drawn.values[y]), ([p.values[x] for p in result.front], [p.values[y] for p in result.front]),
        {", ".join(names): where for where, names in named.items()}, (x, y), out / f"{result.cell}-front.png",
        f"{result.cell}: {len(result.front)} of {result.trials} trials on the front")
    return [front, *(figures.tuning_slices(drawn.params, drawn.log_scale, drawn.numbers, drawn.values[objective],
                                           objective, out / f"{result.cell}-slice-{objective}.png",
                                           f"{result.cell}: slice (validation {objective})")
                     for objective in objectives)]


@task(name="report-tuning")
def report_tuning(cells: list[CellTuning], storage: str, parent_run_id: str, work_dir: str) -> TuningReport:
    """Each cell's figures (optimization history, slices), the JSON, tags with each cell's
    best parameters and a markdown table, on the parent run and in Prefect."""
    out = Path(work_dir).resolve() / "tunings" / parent_run_id
    out.mkdir(parents=True, exist_ok=True)
    trial_runs, pictures, unscored = run_search.child_runs(parent_run_id), [], 0
    for result in cells:
        study = studies.load(result.study, storage)
        pictures += _draw(result, study, out)
        unscored += _mark_unscored(result, study, trial_runs)
    report = TuningReport(cells={result.cell: result for result in cells}, mlflow_run_id=parent_run_id)
    write_json(out / "tuning.json", report.model_dump())
    tables = []
    for result in cells:
        if result.front:
            tables.append(out / f"{result.cell}-front.md")
            tables[-1].write_text(f"# Front of {result.cell}\n\n{front_table(result)}\n")
    mlflow_runs.log_files(parent_run_id, [out / "tuning.json", *tables], "tuning")
    mlflow_runs.log_files(parent_run_id, pictures, "figures/tuning")
    for result in cells:
        if math.isfinite(result.best_value):
            mlflow_runs.log_metrics(parent_run_id, {f"tune/{result.cell}/best_value": result.best_value})
    mlflow_runs.set_tags(parent_run_id, tuned_tags({result.cell: result.best_params for result in cells}))
    table = tuning.markdown_table(report)
    fronts = "".join(f"\n\nFront of `{result.cell}` (`dae compare --tuned {parent_run_id} --point NAME` takes one "
                     f"of its points: `best-<objective>`, `knee`, `noisy-within:MARGIN`):\n\n{front_table(result)}"
                     for result in cells if result.front)
    beyond = (f"\n\n{unscored} trial runs finished past their cell's budget (workers sharing a study stop "
              f"together): tagged `{SCORED}=false`, not scored." if unscored else "")
    mlflow_runs.set_description(parent_run_id, f"**Tuning**: each trial is a child run `<cell>-trial<N>`; "
                                               f"`dae compare --tuned {parent_run_id}` uses these.\n\n"
                                               f"{table}{fronts}{beyond}")
    create_markdown_artifact(f"# DAE tuning\n\n{table}{fronts}\n\nMLflow parent run: `{parent_run_id}`",
                             key="dae-tuning-report")
    return report


@dataclass(frozen=True)
class TunedSettings:
    """What a comparison takes from a tuning: each cell's parameters, and the point of the
    fronts they are (None for a tuning of one objective, which has a best)."""

    params: dict[str, dict[str, object]]
    point: str | None


@task(name="read-tuning")
def read_tuning(run_id: str, point: str | None = None) -> TunedSettings:
    """The parameters a finished tuning run found, per cell: each cell's best (from the
    run's tags; a front's knee), or the point of each cell's front that ``point`` names
    (from the run's ``tuning/tuning.json``)."""
    run = run_search.finished_run(run_id)
    if run is None or run.data.tags.get(ROLE) != ROLE_TUNING:
        raise ConfigError(f"--tuned {run_id}: no finished `dae tune` run with that id in {tracking_uri()}",
                          "pass the MLflow run id that `dae tune` printed at its end")
    if point is None:
        several = len(tuning.labelled_objectives(run.data.params.get("tune.objective", ""))) > 1
        return TunedSettings(tuned_params(run.data.tags), KNEE if several else None)
    check_point(point)
    text = mlflow_runs.load_text(run_id, "tuning/tuning.json")
    if text is None:
        raise ConfigError(f"--point {point}: tuning {run_id} logged no tuning/tuning.json to read its fronts from",
                          "leave --point out (its tags give each cell's best)")
    report = TuningReport.model_validate_json(text)
    return TunedSettings({cell: result.point(point).params for cell, result in report.cells.items()}, point)
