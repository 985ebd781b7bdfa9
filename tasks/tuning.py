"""Tasks of the tuning flow: the parent MLflow run, one Optuna study per cell whose trials
are child runs, and the report (figures, JSON, tags) on the parent."""

from __future__ import annotations

import contextvars
import json
import math
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import deployment, flow_run

from dae_core import tuning
from dae_core.checkpoint import write_json
from dae_core.config import ConfigError, ExperimentConfig
from dae_core.tuning import CellTuning, Dimension, Objective, TrialDiverged, TuningReport
from tasks import progress, tracking
from tasks.data import DatasetRef

# The parent run's tags with each cell's best parameters (JSON values), which
# `dae compare --tuned RUN_ID` reads: dae.tuned.<cell>.<config field>.
TUNED_TAG = "dae.tuned"
# A trial's MLflow run: FINISHED when complete or pruned, FAILED when it diverged or died.
TRIAL_STATE_TAG = "dae.trial_state"
# The progress phase of a finished trial (complete, pruned or diverged).
TRIAL_PHASE = "trial"


def study_storage(work_dir: str, given: str | None) -> str:
    """Where the studies live: ``given`` (e.g. a PostgreSQL URL shared by machines), else
    an SQLite file beside a local tracking store, else in the work folder."""
    if given:
        return given
    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve().parent / 'optuna.db'}"
    return f"sqlite:///{Path(work_dir).resolve() / 'optuna.db'}"


@task(name="open-tuning")
def open_tuning(base: ExperimentConfig, dataset: DatasetRef, cells: list[str], trials: int, objective: Objective,
                experiment: str, key: str, record_dir: str) -> str:
    """The parent MLflow run: the one an interrupted run of this tuning left (recorded in
    ``record_dir``), whose unfinished trial runs died with it, or a new one."""
    record = Path(record_dir) / "parent.json"
    if record.exists():
        previous = json.loads(record.read_text())["mlflow_run_id"]
        if tracking.reopen_run(previous, {"dae.resumed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                          "prefect.flow_run_id": str(flow_run.id or "")}):
            tracking.fail_running_children(previous, {"dae.killed": "true", TRIAL_STATE_TAG: "killed"})
            get_run_logger().info("continuing the interrupted tuning %s", previous)
            return previous
    tags = {"dae.role": "tuning", "dae.tuning_key": key, "prefect.flow_run_id": str(flow_run.id or ""),
            "prefect.flow_run_name": flow_run.name or "", "prefect.deployment_name": deployment.name or ""}
    parent = tracking.start_run(experiment, flow_run.name or "tune", tags)
    tracking.log_config(parent, base, {"tune.cells": ",".join(cells), "tune.trials": trials,
                                       "tune.objective": objective})
    tracking.log_dataset(parent, dataset.name, dataset.digest, dataset.raw_dir, {})
    tracking.set_description(parent, f"**Tuning** of {', '.join(f'`{c}`' for c in cells)}: {trials} trials each, "
                                     f"objective validation {objective}; each trial is a child run "
                                     "`<cell>-trial<N>`.")
    write_json(record, {"mlflow_run_id": parent})
    return parent


def _epochs(config: ExperimentConfig, objective: Objective) -> int:
    """How many values a trial reports: one per epoch of the stage its objective scores."""
    return config.pretrain.epochs if objective == "mse" else config.classifier.epochs


def _metric(objective: Objective) -> str:
    return "pretrain/val_mse" if objective == "mse" else "classifier/val_accuracy"


@task(name="tune-cell")
def tune_cell(cell: str, config: ExperimentConfig, space: tuple[Dimension, ...], objective: Objective,
              trials: int, parallel: int, dataset: DatasetRef, storage: str, parent_run_id: str,
              experiment: str) -> CellTuning:
    """Run the cell's study until ``trials`` trials are complete or pruned (a rerun counts
    those already in the study), ``parallel`` at a time. Each trial is a child MLflow run
    with its parameters, its per-epoch validation values and its state."""
    import optuna

    logger = get_run_logger()
    # Optuna runs parallel trials in threads of its own, which do not inherit this task's
    # context (where the progress listener lives): they report through a copy, one at a time.
    context, reporting = contextvars.copy_context(), threading.Lock()
    prefect_flow_run = str(flow_run.id or "")  # read here: Optuna's threads do not see it

    def trial_done(trial_number: int) -> None:
        with reporting:
            context.run(progress.notify, TRIAL_PHASE, trial_number + 1, trials, {})

    name = tuning.study_name(cell, config, space, objective, dataset.digest)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its INFO lines would break the progress bar
    study = optuna.create_study(
        study_name=name, storage=storage, direction=tuning.DIRECTIONS[objective], load_if_exists=True,
        # Seeded: the same command proposes the same trials. Pruning compares a trial's epoch
        # with the median of earlier trials at that epoch, after a few complete ones and only
        # in the second half of training: early on every curve is ranked by its step size
        # (a first run pruned at epoch 2 every Adam rate below the best, 0.0043 next to 0.0044).
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=_epochs(config, objective) // 2))
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = trials - len(study.get_trials(deepcopy=False, states=counted))
    metric = _metric(objective)

    def objective_fn(trial: optuna.Trial) -> float:
        params = tuning.suggest(trial, space)
        trial_config = tuning.with_params(config, params)
        run_id = tracking.start_run(experiment, f"{cell}-trial{trial.number}", {
            "dae.role": "trial", "dae.cell": cell, "dae.study": name, "dae.trial": str(trial.number),
            "prefect.flow_run_id": prefect_flow_run},
            parent_run_id=parent_run_id)
        tracking.log_config(run_id, trial_config)

        def report(epoch: int, value: float) -> None:
            tracking.log_metrics(run_id, {metric: value}, step=epoch)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {value:.4g} is worse than the median of earlier trials")

        try:
            value = tuning.train_trial(trial_config, Path(dataset.raw_dir), objective, report)
        except optuna.TrialPruned:
            # FINISHED: stopping a trial that fell behind is the search working, not a failure.
            tracking.set_tags(run_id, {TRIAL_STATE_TAG: "pruned"})
            tracking.end_run(run_id, succeeded=True)
            trial_done(trial.number)
            raise
        except TrialDiverged as error:
            # Pruned for the sampler (a region to avoid), FAILED in MLflow with the reason.
            tracking.set_tags(run_id, {TRIAL_STATE_TAG: "diverged", "dae.failure_detail": str(error)[:500]})
            tracking.end_run(run_id, succeeded=False)
            trial_done(trial.number)
            raise optuna.TrialPruned(f"diverged: {error}") from None
        except BaseException:
            tracking.end_run(run_id, succeeded=False)
            raise
        tracking.log_metrics(run_id, {"tune/value": value})
        tracking.set_tags(run_id, {TRIAL_STATE_TAG: "complete"})
        tracking.end_run(run_id, succeeded=True)
        trial_done(trial.number)
        return value

    if remaining > 0:
        logger.info("study %s: %d trials to run (%d already done)", name, remaining, trials - remaining)
        # The callback stops at `trials` counted over every process sharing the study (a
        # second `dae tune` on another machine with the same --storage), not just this one.
        study.optimize(objective_fn, n_trials=remaining, n_jobs=parallel,
                       callbacks=[optuna.study.MaxTrialsCallback(trials, states=counted)])
    return _cell_result(cell, study, objective)


def _cell_result(cell: str, study, objective: Objective) -> CellTuning:
    import optuna

    states = [trial.state for trial in study.get_trials(deepcopy=False)]
    complete = states.count(optuna.trial.TrialState.COMPLETE)
    if complete == 0:
        raise RuntimeError(f"cell {cell}: no trial completed (all pruned or diverged); widen or move --space")
    return CellTuning(cell=cell, study=study.study_name, objective=objective, best_params=study.best_params,
                      best_value=study.best_value, trials=complete + states.count(optuna.trial.TrialState.PRUNED),
                      pruned=states.count(optuna.trial.TrialState.PRUNED))


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
    pictures = []
    for result in cells:
        study = optuna.load_study(study_name=result.study, storage=storage)
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
    tracking.log_files(parent_run_id, [out / "tuning.json"], "tuning")
    tracking.log_files(parent_run_id, pictures, "figures/tuning")
    tags: dict[str, Any] = {}
    for result in cells:
        tags.update({f"{TUNED_TAG}.{result.cell}.{key}": json.dumps(value)
                     for key, value in result.best_params.items()})
        if math.isfinite(result.best_value):
            tracking.log_metrics(parent_run_id, {f"tune/{result.cell}/best_value": result.best_value})
    tracking.set_tags(parent_run_id, tags)
    table = tuning.markdown_table(report)
    tracking.set_description(parent_run_id, f"**Tuning**: each trial is a child run `<cell>-trial<N>`; "
                                            f"`dae compare --tuned {parent_run_id}` uses these.\n\n{table}")
    create_markdown_artifact(f"# DAE tuning\n\n{table}\n\nMLflow parent run: `{parent_run_id}`",
                             key="dae-tuning-report")
    return report


@task(name="read-tuning")
def read_tuning(run_id: str) -> dict[str, dict[str, Any]]:
    """The best parameters a finished tuning run found, per cell (from its tags)."""
    try:
        run = tracking.client().get_run(run_id)
    except Exception:  # MLflow's "not found" differs between stores
        run = None
    if run is None or run.data.tags.get("dae.role") != "tuning" or run.info.status != "FINISHED":
        raise ConfigError(f"--tuned {run_id}: no finished `dae tune` run with that id in {tracking.tracking_uri()}\n"
                          "  fix: pass the MLflow run id that `dae tune` printed at its end")
    tuned: dict[str, dict[str, Any]] = {}
    for name, value in run.data.tags.items():
        if name.startswith(f"{TUNED_TAG}."):
            cell, key = name.removeprefix(f"{TUNED_TAG}.").split(".", 1)
            tuned.setdefault(cell, {})[key] = json.loads(value)
    return tuned
