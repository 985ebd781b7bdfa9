"""Training and evaluation tasks: one dae_core stage each, metrics to MLflow per epoch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from dae_core import stages
from dae_core.checkpoint import load_checkpoint
from dae_core.config import ExperimentConfig
from tasks import progress, tracking
from tasks.data import DatasetRef
from tasks.run import RunContext, report_progress


def _relog_restored(context: RunContext, prefix: str, state_path: Path) -> None:
    """After a crash, a new MLflow run starts from a checkpoint: give it the earlier epochs
    so its metric history is whole (skipped when this run already has them)."""
    if not state_path.exists():
        return
    history = load_checkpoint(state_path)["history"]
    first_key = f"{prefix}/{next(iter(history))}"
    if not tracking.client().get_metric_history(context.mlflow_run_id, first_key):
        tracking.log_history(context.mlflow_run_id, prefix, history)
        get_run_logger().info("resumed %s after epoch %d", prefix, len(history[next(iter(history))]))


def _epoch_logger(context: RunContext, prefix: str, epochs_before: int, epochs: int):
    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        tracking.log_metrics(context.mlflow_run_id,
                             {f"{prefix}/{key}": value for key, value in metrics.items()}, step=epoch)
        report_progress(context, epochs_before + epoch)
        progress.notify(prefix, epoch, epochs, metrics)

    return on_epoch


def _stage_result(output: Path, history: dict, started: float, clock: stages.LoopClock) -> dict[str, Any]:
    """``seconds``: the whole stage (data, epochs, checkpoints, per-epoch tracking);
    ``loop_seconds``: the epoch loops alone, the bare training."""
    return {"path": str(output), "history": history, "seconds": time.perf_counter() - started,
            "loop_seconds": clock.seconds}


@task(name="pretrain", retries=1, retry_delay_seconds=5)
def pretrain(config: ExperimentConfig, dataset: DatasetRef, context: RunContext) -> dict[str, Any]:
    """Denoising pretraining; a retry resumes from the last finished epoch."""
    state = Path(context.state_dir) / "pretrain.state.pt"
    _relog_restored(context, "pretrain", state)
    output = Path(context.out_dir) / "autoencoder.pt"
    started, clock = time.perf_counter(), stages.LoopClock()
    history = stages.pretrain_stage(config, Path(dataset.raw_dir), output, state,
                                    _epoch_logger(context, "pretrain", 0, config.pretrain.epochs), clock)
    return _stage_result(output, history, started, clock)


@task(name="encoder-surgery")
def encoder_surgery(config: ExperimentConfig, autoencoder_path: str, context: RunContext) -> str:
    return str(stages.surgery_stage(config, Path(autoencoder_path),
                                    Path(context.out_dir) / "classifier_initial.pt"))


@task(name="train-classifier", retries=1, retry_delay_seconds=5)
def train_classifier(config: ExperimentConfig, dataset: DatasetRef, initial_path: str,
                     context: RunContext) -> dict[str, Any]:
    state = Path(context.state_dir) / "classifier.state.pt"
    _relog_restored(context, "classifier", state)
    output = Path(context.out_dir) / "classifier.pt"
    started, clock = time.perf_counter(), stages.LoopClock()
    history = stages.classifier_stage(
        config, Path(dataset.raw_dir), Path(initial_path), output, state,
        _epoch_logger(context, "classifier", config.pretrain.epochs,
                      config.classifier.epochs),
        clock,
    )
    return _stage_result(output, history, started, clock)


@task(name="evaluate")
def evaluate(config: ExperimentConfig, dataset: DatasetRef, classifier_path: str,
             context: RunContext) -> dict[str, Any]:
    result = stages.evaluate_stage(config, Path(dataset.raw_dir), Path(classifier_path),
                                   Path(context.out_dir) / "evaluation.json")
    final = {"test/accuracy": result.accuracy, "test/noisy_accuracy": result.noisy_accuracy}
    final.update({f"test/accuracy_class_{digit}": value
                  for digit, value in enumerate(result.per_class_accuracy)})
    tracking.log_metrics(context.mlflow_run_id, final)
    return result.as_dict()
