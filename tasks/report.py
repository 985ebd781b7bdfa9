"""The experiment's last steps, a task each so that the Prefect graph shows them: the
figures, the model registered with its card, the monitoring reference, and the report
(tables, timings, the summary) in MLflow and in the Prefect UI."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from adapters import champion, mlflow_links, mlflow_runs, model_registry
from dae_core import stages
from dae_core.checkpoint import write_json
from dae_core.config import ExperimentConfig
from dae_core.evaluate import Evaluation
from dae_core.monitoring import REFERENCE_ARTIFACT
from dae_core.runtime import Runtime
from dae_core.shapes import NUM_CLASSES
from dae_core.summary import RunSummary, Timing, build_summary, timing_metrics
from dae_core.train import ClassifierHistory, PretrainHistory
from tasks.data import DatasetRef
from tasks.run import RunContext, changed_fields, prefect_flow_run_link


def _results(summary: RunSummary) -> str:
    """The headline numbers, as markdown bullets (Prefect summary and MLflow description)."""
    mse, accuracy = summary.pretrain.mse, summary.classifier.test_accuracy
    return "\n".join([
        f"- test accuracy: **{summary.test.accuracy:.2f}%** (noisy test set: {summary.test.noisy_accuracy:.2f}%)",
        f"- pretraining MSE: {mse[0]:.4f} (epoch 1) -> {mse[-1]:.4f} (epoch {len(mse)})" if mse
        else "- pretraining: skipped (random encoder)",
        f"- classifier test accuracy: {accuracy[0]:.2f}% (epoch 1) -> {accuracy[-1]:.2f}% (epoch {len(accuracy)})",
        f"- training time: pretraining {summary.timing.pretrain_s:.1f} s, "
        f"classifier {summary.timing.classifier_s:.1f} s",
    ])


def _markdown(summary: RunSummary) -> str:
    return "\n".join(["# DAE experiment", f"- MLflow run: {mlflow_links.run_reference(summary.mlflow_run_id)}",
                      _results(summary)])


@task(name="figures")
def draw_figures(config: ExperimentConfig, dataset: DatasetRef, pretrained: stages.StageResult[PretrainHistory],
                 classified: stages.StageResult[ClassifierHistory], evaluation: Evaluation,
                 context: RunContext) -> list[Path]:
    """Every figure of the experiment, logged under ``figures/``."""
    pictures = stages.figures_stage(config, Path(dataset.raw_dir), pretrained.path, classified.path, evaluation,
                                    Path(context.out_dir) / "figures")
    mlflow_runs.log_files(context.mlflow_run_id, pictures, "figures")
    return pictures


@task(name="register-model")
def register_classifier(config: ExperimentConfig, dataset: DatasetRef,
                        classified: stages.StageResult[ClassifierHistory], evaluation: Evaluation,
                        context: RunContext, register: bool = True) -> model_registry.LoggedClassifier:
    """The classifier logged as the run's model and, if ``register``, a new version of the
    registered model with its card (what it scored, on which data, from which run)."""
    classifier = stages.load_classifier(config, classified.path, Runtime.start(config.runtime).place)
    logged = model_registry.log_classifier(context.mlflow_run_id, classifier, register=register)
    if logged.version is not None:
        preset, changes = changed_fields(config)
        champion.describe_model()
        champion.describe_version(champion.VersionCard(
            version=logged.version, run_id=context.mlflow_run_id, flow_run=prefect_flow_run_link(),
            dataset=dataset.name, dataset_digest=dataset.digest, preset=preset, changes=changes,
            test_accuracy=evaluation.accuracy, noisy_accuracy=evaluation.noisy_accuracy))
    return logged


@task(name="monitoring-reference")
def record_reference(config: ExperimentConfig, dataset: DatasetRef, classified: stages.StageResult[ClassifierHistory],
                     evaluation: Evaluation, context: RunContext) -> None:
    """What this model's scored batches will be compared with (``dae-score``'s monitoring)."""
    reference = stages.reference_stage(config, Path(dataset.raw_dir), classified.path, evaluation.accuracy)
    mlflow_runs.log_text(context.mlflow_run_id, reference.model_dump_json(), REFERENCE_ARTIFACT)


@task(name="report")
def report(pretrained: stages.StageResult[PretrainHistory], classified: stages.StageResult[ClassifierHistory],
           evaluation: Evaluation, model: model_registry.LoggedClassifier, context: RunContext) -> RunSummary:
    """The run's tables, timings, summary and description in MLflow; its key numbers and
    per-class accuracy in the Prefect UI."""
    run_id, out = context.mlflow_run_id, Path(context.out_dir)
    digits = list(range(NUM_CLASSES))
    mlflow_runs.log_table(run_id, {"digit": digits, "accuracy": evaluation.per_class_accuracy},
                          "tables/per_class_accuracy.json")
    confusion = {"true": digits, **{f"predicted_{p}": [row[p] for row in evaluation.confusion] for p in digits}}
    mlflow_runs.log_table(run_id, confusion, "tables/confusion_matrix.json")
    timing = Timing(pretrain_s=pretrained.seconds, classifier_s=classified.seconds,
                    pretrain_loop_s=pretrained.loop_seconds, classifier_loop_s=classified.loop_seconds)
    mlflow_runs.log_metrics(run_id, timing_metrics(timing))
    summary = build_summary(pretrained.history, classified.history, evaluation.scores(), timing, run_id, model.uri)
    mlflow_runs.set_description(run_id, f"{context.description}\n\n{_results(summary)}")
    write_json(out / "summary.json", summary.model_dump())
    mlflow_runs.log_files(run_id, [out / "summary.json"], "")

    create_markdown_artifact(_markdown(summary), key="dae-experiment-summary", description="Key numbers of this run")
    create_table_artifact([{"digit": d, "accuracy_percent": round(a, 2)}
                           for d, a in enumerate(evaluation.per_class_accuracy)],
                          key="dae-per-class-accuracy", description="Per-class test accuracy")
    get_run_logger().info("test accuracy %.2f%%, run outputs in %s", evaluation.accuracy, out)
    return summary
