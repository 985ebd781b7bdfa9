"""Training and evaluation tasks: one dae_core stage each, metrics to MLflow per epoch."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from adapters import mlflow_runs, progress
from dae_core import stages
from dae_core.checkpoint import load_checkpoint
from dae_core.config import ExperimentConfig
from dae_core.evaluate import Evaluation
from dae_core.summary import epoch_metrics, evaluation_metrics
from dae_core.train import ClassifierHistory, EpochCallback, History, PretrainHistory
from tasks.data import DatasetRef
from tasks.run import RunContext, report_progress


def _relog_restored(context: RunContext, phase: str, state_path: Path, empty: History) -> None:
    """After a crash, a new MLflow run starts from a checkpoint: give it the earlier epochs
    so its metric history is whole (skipped when this run already has them)."""
    if not state_path.exists():
        return
    history = type(empty).from_dict(load_checkpoint(state_path)["history"])
    first_key = next(iter(epoch_metrics(phase, history.as_dict())))
    if not mlflow_runs.has_metric(context.mlflow_run_id, first_key):
        mlflow_runs.log_history(context.mlflow_run_id, phase, history)
        get_run_logger().info("resumed %s after epoch %d", phase, history.epochs)


def _epoch_logger(context: RunContext, phase: progress.Phase, epochs_before: int, epochs: int) -> EpochCallback:
    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        mlflow_runs.log_metrics(context.mlflow_run_id, epoch_metrics(phase, metrics), step=epoch)
        report_progress(context, epochs_before + epoch)
        progress.notify(progress.ProgressEvent(phase, epoch, epochs, metrics))

    return on_epoch


@task(name="pretrain", retries=1, retry_delay_seconds=5)
def pretrain(config: ExperimentConfig, dataset: DatasetRef,
             context: RunContext) -> stages.StageResult[PretrainHistory]:
    """Denoising pretraining; a retry resumes from the last finished epoch."""
    state = Path(context.state_dir) / "pretrain.state.pt"
    _relog_restored(context, "pretrain", state, PretrainHistory())
    return stages.pretrain_stage(config, Path(dataset.raw_dir), Path(context.out_dir) / "autoencoder.pt", state,
                                 _epoch_logger(context, progress.Phase.PRETRAIN, 0, config.pretrain.epochs))


@task(name="encoder-surgery")
def encoder_surgery(config: ExperimentConfig, autoencoder_path: Path, context: RunContext) -> Path:
    return stages.surgery_stage(config, autoencoder_path, Path(context.out_dir) / "classifier_initial.pt")


@task(name="train-classifier", retries=1, retry_delay_seconds=5)
def train_classifier(config: ExperimentConfig, dataset: DatasetRef, initial_path: Path,
                     context: RunContext) -> stages.StageResult[ClassifierHistory]:
    state = Path(context.state_dir) / "classifier.state.pt"
    _relog_restored(context, "classifier", state, ClassifierHistory())
    return stages.classifier_stage(
        config, Path(dataset.raw_dir), initial_path, Path(context.out_dir) / "classifier.pt", state,
        _epoch_logger(context, progress.Phase.CLASSIFIER, config.pretrain.epochs, config.classifier.epochs),
    )


@task(name="evaluate")
def evaluate(config: ExperimentConfig, dataset: DatasetRef, classifier_path: Path,
             context: RunContext) -> Evaluation:
    result = stages.evaluate_stage(config, Path(dataset.raw_dir), classifier_path,
                                   Path(context.out_dir) / "evaluation.json")
    mlflow_runs.log_metrics(context.mlflow_run_id, evaluation_metrics(result.scores()))
    return result
