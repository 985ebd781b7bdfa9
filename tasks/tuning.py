"""Tasks of the tuning flow: the parent MLflow run, one Optuna study per cell whose trials
are child runs, and the report (figures, JSON, tags) on the parent."""

from __future__ import annotations

import contextvars
import json
import math
import threading
import warnings
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from adapters import mlflow_runs, mlflow_store, progress, run_search
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
from dae_core import tuning
from dae_core.checkpoint import write_json
from dae_core.config import ConfigError, ExperimentConfig
from dae_core.errors import EXIT_SERVER, DaeError
from dae_core.runtime import derive_seed
from dae_core.tuning import CellTuning, Dimension, Objective, TrialDiverged, TuningReport
from tasks.data import DatasetRef

# A study's user attribute: the id of the parent MLflow run its trials are filed under.
PARENT_ATTR = "dae.mlflow_run_id"


def study_storage(work_dir: str, given: str | None) -> str:
    """Where the studies live: ``given`` (e.g. a PostgreSQL URL shared by machines), else
    an SQLite file beside a local tracking store, else in the work folder."""
    if given:
        return given
    uri = mlflow_store.tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve().parent / 'optuna.db'}"
    return f"sqlite:///{Path(work_dir).resolve() / 'optuna.db'}"


@task(name="open-tuning")
def open_tuning(base: ExperimentConfig, dataset: DatasetRef, cells: list[str], trials: int, objective: Objective,
                experiment: str, key: str, record_dir: str, trials_in_process: bool = True) -> str:
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
    mlflow_runs.log_config(parent, base, {"tune.cells": ",".join(cells), "tune.trials": trials,
                                       "tune.objective": objective})
    mlflow_runs.log_dataset(parent, dataset.name, dataset.digest, dataset.raw_dir, {})
    mlflow_runs.set_description(parent, f"**Tuning** of {', '.join(f'`{c}`' for c in cells)}: {trials} trials each, "
                                     f"objective validation {objective}; each trial is a child run "
                                     "`<cell>-trial<N>`.")
    write_json(record, {"mlflow_run_id": parent})
    return parent


def fail_killed_trials(parent_run_id: str) -> list[str]:
    """End FAILED the trial runs still RUNNING under a tuning whose trials have all stopped
    (their process was killed); returns their ids."""
    return run_search.fail_running_children(parent_run_id, {KILLED: "true", TRIAL_STATE: "killed"})


def _epochs(config: ExperimentConfig, objective: Objective) -> int:
    """How many values a trial reports: one per epoch of the stage its objective scores."""
    return config.pretrain.epochs if objective == "mse" else config.classifier.epochs


def _metric(objective: Objective) -> str:
    return "pretrain/val_mse" if objective == "mse" else "classifier/val_accuracy"


@task(name="tune-cell")
def tune_cell(cell: str, config: ExperimentConfig, space: tuple[Dimension, ...], objective: Objective,
              trials: int, parallel: int, dataset: DatasetRef, storage: str, parent_run_id: str,
              experiment: str, machine: str, worker: int = 0) -> CellTuning:
    """Run the cell's study until ``trials`` trials are complete or pruned (a rerun counts
    those already in the study), ``parallel`` at a time. Each trial is a child MLflow run
    with its parameters, its per-epoch validation values and its state, tagged with the
    ``machine`` that trained it. ``worker`` > 0: one of several deployment runs sharing the
    study, which its dispatcher created."""
    import optuna

    logger = get_run_logger()
    # Optuna runs parallel trials in threads of its own, which do not inherit this task's
    # context (where the progress listener lives): they report through a copy, one at a time.
    context, reporting = contextvars.copy_context(), threading.Lock()
    prefect_flow_run = str(flow_run.id or "")  # read here: Optuna's threads do not see it

    def trial_done(trial_number: int) -> None:
        with reporting:
            context.run(progress.notify, progress.ProgressEvent(progress.Phase.TRIAL, trial_number + 1, trials))

    name = tuning.study_name(cell, config, space, objective, dataset.digest, experiment)
    study = _open_study(name, storage, config, objective, worker)
    earlier = min(trials, len(study.get_trials(deepcopy=False, states=_counted())))
    remaining = trials - earlier
    if earlier:
        progress.notify(progress.ProgressEvent(progress.Phase.REUSED, earlier, earlier))
    metric = _metric(objective)

    def objective_fn(trial: optuna.Trial) -> float:
        params = tuning.suggest(trial, space)
        trial_config = tuning.with_params(config, params)
        run_id = mlflow_runs.start_run(experiment, f"{cell}-trial{trial.number}", {
            ROLE: ROLE_TRIAL, CELL: cell, STUDY: name, TRIAL: str(trial.number),
            WORKER: machine, FLOW_RUN_ID: prefect_flow_run},
            parent_run_id=parent_run_id)
        mlflow_runs.log_config(run_id, trial_config)

        def report(epoch: int, value: float) -> None:
            mlflow_runs.log_metrics(run_id, {metric: value}, step=epoch)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {value:.4g} is worse than the median of earlier trials")

        try:
            value = tuning.train_trial(trial_config, Path(dataset.raw_dir), objective, report)
        except optuna.TrialPruned:
            # FINISHED: stopping a trial that fell behind is the search working, not a failure.
            mlflow_runs.set_tags(run_id, {TRIAL_STATE: "pruned"})
            mlflow_runs.end_run(run_id, succeeded=True)
            trial_done(trial.number)
            raise
        except TrialDiverged as error:
            # Pruned for the sampler (a region to avoid), FAILED in MLflow with the reason.
            mlflow_runs.set_tags(run_id, {TRIAL_STATE: "diverged", FAILURE_DETAIL: str(error)[:500]})
            mlflow_runs.end_run(run_id, succeeded=False)
            trial_done(trial.number)
            raise optuna.TrialPruned(f"diverged: {error}") from None
        except BaseException:
            mlflow_runs.end_run(run_id, succeeded=False)
            raise
        mlflow_runs.log_metrics(run_id, {"tune/value": value})
        mlflow_runs.set_tags(run_id, {TRIAL_STATE: "complete"})
        mlflow_runs.end_run(run_id, succeeded=True)
        trial_done(trial.number)
        return value

    if remaining > 0:
        logger.info("study %s: %d trials to run (%d already done)", name, remaining, earlier)
        # The callback stops at `trials` counted over every process sharing the study (a
        # second `dae tune` on another machine with the same --storage), not just this one.
        study.optimize(objective_fn, n_trials=remaining, n_jobs=parallel,
                       callbacks=[optuna.study.MaxTrialsCallback(trials, states=_counted())])
    return cell_result(cell, study, objective, trials)


def _counted() -> tuple:
    """The trials a study's budget counts: complete, or stopped by the pruner or by divergence."""
    import optuna

    return optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


def _counted_in_order(study) -> list:
    """The study's counted trials, first started first: a cell's budget is the first N."""
    return sorted(study.get_trials(deepcopy=False, states=_counted()), key=lambda trial: trial.number)


def _open_study(name: str, storage: str, config: ExperimentConfig, objective: Objective, worker: int):
    import optuna

    # Pruning compares a trial's epoch with the median of earlier trials at that epoch, after
    # a few complete ones and only in the second half of training: early on every curve is
    # ranked by its step size (a first run pruned at epoch 2 every Adam rate below the best,
    # 0.0043 next to 0.0044).
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=_epochs(config, objective) // 2)
    if worker == 0:
        study = optuna.create_study(study_name=name, storage=storage, direction=tuning.DIRECTIONS[objective],
                                    load_if_exists=True, pruner=pruner)
    else:
        try:
            study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
        except KeyError:
            raise ConfigError(
                f"study {name} is not in this worker's study storage {_shown(storage)}",
                "give the workers DAE_TUNING_STORAGE naming the database that `dae tune --fan-out` uses (--storage)",
            ) from None
    # Seeded, so that the same command proposes the same trials; but not with the same seed
    # in each of several workers or in a resumed study, which would propose again the points
    # already tried. A fresh study in one process keeps the plain seed its recorded runs used.
    done = len(study.get_trials(deepcopy=False))
    seed = config.seed if (worker, done) == (0, 0) else derive_seed(config.seed, f"tune:{worker}:{done}") % 2**32
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    return study


def _shown(storage: str) -> str:
    """A storage URL without its password, fit for messages and logs."""
    from sqlalchemy.engine import make_url

    return make_url(storage).render_as_string(hide_password=True)


def shareable_storage(storage: str) -> str | None:
    """``storage`` as a fan-out passes it to its workers: only without a password, which
    would show among the runs' parameters; else each worker uses its own DAE_TUNING_STORAGE."""
    from sqlalchemy.engine import make_url

    return storage if make_url(storage).password is None else None


def create_studies(names: list[str], configs: list[ExperimentConfig], storage: str, objective: Objective,
                   parent_run_id: str) -> None:
    """Create the studies (a fan-out's workers only open them, so that one pointed at another
    database fails instead of tuning on its own), each recording the MLflow run its trials
    are filed under: the first tuning that opened it."""
    for name, config in zip(names, configs, strict=True):
        study = _open_study(name, storage, config, objective, worker=0)
        if PARENT_ATTR not in study.user_attrs:
            study.set_user_attr(PARENT_ATTR, parent_run_id)


def finished_tuning(names: list[str], storage: str, trials: int) -> str | None:
    """The MLflow run of the tuning that already ran these studies with a budget of
    ``trials`` each, if one did and its run is there, finished; else None. (A study may
    hold more than its budget: workers sharing it finish together; a tuning with a larger
    budget is another one.)"""
    import optuna

    parents = set()
    for name in names:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            return None
        if len(study.get_trials(deepcopy=False, states=_counted())) < trials:
            return None
        parents.add(study.user_attrs.get(PARENT_ATTR))
    parent = parents.pop() if len(parents) == 1 else None
    run = run_search.finished_run(parent) if parent else None
    return parent if run is not None and run.data.params.get("tune.trials") == str(trials) else None


def cell_result(cell: str, study, objective: Objective, trials: int) -> CellTuning:
    """The cell's result over its first ``trials`` complete or pruned trials: workers sharing
    a study may finish a few more (each stops only when the count is reached), and every
    cell gets the same budget."""
    import optuna

    counted = _counted_in_order(study)[:trials]
    complete = [trial for trial in counted if trial.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"cell {cell}: no trial completed (all pruned or diverged); widen or move --space")
    pick = min if tuning.DIRECTIONS[objective] == "minimize" else max
    best = pick(complete, key=lambda trial: trial.value)
    return CellTuning(cell=cell, study=study.study_name, objective=objective, best_params=best.params,
                      best_value=best.value, trials=len(counted), pruned=len(counted) - len(complete))


class TuningIncomplete(DaeError):
    """Fanned-out workers ended before every study held its trials."""

    exit_code = EXIT_SERVER
    fix = "run the same command again: it continues the studies"


class StudyProgress:
    """How many trials of some studies' budgets (``trials`` each) are complete or pruned so
    far, asked again and again while workers run them: one connection pool for all the
    asking, not one per question."""

    def __init__(self, names: list[str], storage: str, trials: int) -> None:
        import optuna

        shared = optuna.storages.RDBStorage(storage)
        self.studies = [optuna.load_study(study_name=name, storage=shared) for name in names]
        self.trials = trials

    def counted(self) -> int:
        return sum(min(self.trials, len(study.get_trials(deepcopy=False, states=_counted())))
                   for study in self.studies)


@task(name="read-studies")
def read_studies(cells: list[str], names: list[str], storage: str, objective: Objective,
                 trials: int) -> list[CellTuning]:
    """Each cell's result, read from its study (after a fan-out's workers have ended)."""
    import optuna

    results = []
    for cell, name in zip(cells, names, strict=True):
        result = cell_result(cell, optuna.load_study(study_name=name, storage=storage), objective, trials)
        if result.trials < trials:
            raise TuningIncomplete(f"cell {cell}: {result.trials} of {trials} trials done when the workers ended "
                                   "(see their flow runs)")
        results.append(result)
    return results


def _mark_unscored(parent_run_id: str, result: CellTuning, study) -> int:
    """Tag the runs of the cell's trials beyond its first ``result.trials`` counted ones;
    returns how many."""
    beyond = {str(trial.number) for trial in _counted_in_order(study)[result.trials:]}
    runs = [run for run in run_search.child_runs(parent_run_id)
            if run.data.tags.get(STUDY) == result.study and run.data.tags.get(TRIAL) in beyond]
    for run in runs:
        mlflow_runs.set_tags(run.info.run_id, {SCORED: "false"})
    return len(runs)


@task(name="report-tuning")
def report_tuning(cells: list[CellTuning], storage: str, parent_run_id: str, work_dir: str) -> TuningReport:
    """Optuna's figures per cell (optimization history, slices), the JSON, tags with each
    cell's best parameters and a markdown table, on the parent run and in Prefect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    out = Path(work_dir).resolve() / "tunings" / parent_run_id
    out.mkdir(parents=True, exist_ok=True)
    pictures, unscored = [], 0
    for result in cells:
        study = optuna.load_study(study_name=result.study, storage=storage)
        unscored += _mark_unscored(parent_run_id, result, study)
        for kind, plot in (("history", optuna_plots.plot_optimization_history), ("slice", optuna_plots.plot_slice)):
            with warnings.catch_warnings():  # "experimental" since Optuna 2.2: noted, not a user's concern
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
            title = f"{result.cell}: {'optimization history' if kind == 'history' else 'slice'} " \
                    f"(validation {result.objective})"
            if hasattr(axes, "flat"):  # a slice over several fields: one panel each
                figure = axes.flat[0].figure
                figure.suptitle(title)
            else:
                figure = axes.figure
                axes.set_title(title)
            figure.set_size_inches(7, 4.5)
            path = out / f"{result.cell}-{kind}.png"
            figure.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(figure)
            pictures.append(path)
    report = TuningReport(cells={result.cell: result for result in cells}, mlflow_run_id=parent_run_id)
    write_json(out / "tuning.json", report.model_dump())
    mlflow_runs.log_files(parent_run_id, [out / "tuning.json"], "tuning")
    mlflow_runs.log_files(parent_run_id, pictures, "figures/tuning")
    for result in cells:
        if math.isfinite(result.best_value):
            mlflow_runs.log_metrics(parent_run_id, {f"tune/{result.cell}/best_value": result.best_value})
    mlflow_runs.set_tags(parent_run_id, tuned_tags({result.cell: result.best_params for result in cells}))
    table = tuning.markdown_table(report)
    beyond = (f"\n\n{unscored} trial runs finished past their cell's budget (workers sharing a study stop "
              f"together): tagged `{SCORED}=false`, not scored." if unscored else "")
    mlflow_runs.set_description(parent_run_id, f"**Tuning**: each trial is a child run `<cell>-trial<N>`; "
                                            f"`dae compare --tuned {parent_run_id}` uses these.\n\n{table}{beyond}")
    create_markdown_artifact(f"# DAE tuning\n\n{table}\n\nMLflow parent run: `{parent_run_id}`",
                             key="dae-tuning-report")
    return report


@task(name="read-tuning")
def read_tuning(run_id: str) -> dict[str, dict[str, Any]]:
    """The best parameters a finished tuning run found, per cell (from its tags)."""
    run = run_search.finished_run(run_id)
    if run is None or run.data.tags.get(ROLE) != ROLE_TUNING:
        raise ConfigError(f"--tuned {run_id}: no finished `dae tune` run with that id in "
                          f"{mlflow_store.tracking_uri()}", "pass the MLflow run id that `dae tune` printed at its end")
    return tuned_params(run.data.tags)
