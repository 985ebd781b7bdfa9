"""The report task: figures, tables and the model into MLflow; a summary for people in
the Prefect UI."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from adapters import registry, tracking
from dae_core import stages
from dae_core.checkpoint import write_json
from dae_core.config import ExperimentConfig
from dae_core.evaluate import Evaluation
from dae_core.monitoring import REFERENCE_ARTIFACT
from dae_core.runtime import Placement
from dae_core.shapes import NUM_CLASSES
from dae_core.summary import RunSummary, Timing, build_summary, timing_metrics
from dae_core.train import ClassifierHistory, PretrainHistory
from tasks.data import DatasetRef
from tasks.registry import crown_first_version
from tasks.run import RunContext, changed_fields, prefect_flow_run_link


def _run_link(run_id: str) -> str:
    """A clickable MLflow UI link where the tracking URI is a server, else the run id."""
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        experiment = tracking.client().get_run(run_id).info.experiment_id
        return f"[{run_id}]({tracking.run_link(uri, experiment, run_id)})"
    return f"`{run_id}` in `{uri}` (open with `mlflow ui --backend-store-uri {uri}`)"


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
    return "\n".join(["# DAE experiment", f"- MLflow run: {_run_link(summary.mlflow_run_id)}", _results(summary)])


@task(name="report")
def report(config: ExperimentConfig, dataset: DatasetRef, pretrained: stages.StageResult[PretrainHistory],
           classified: stages.StageResult[ClassifierHistory], evaluation: Evaluation, context: RunContext,
           register_model: bool = True) -> RunSummary:
    run_id = context.mlflow_run_id
    out = Path(context.out_dir)
    pictures = stages.figures_stage(config, Path(dataset.raw_dir), pretrained.path, classified.path, evaluation,
                                    out / "figures")
    tracking.log_files(run_id, pictures, "figures")
    digits = list(range(NUM_CLASSES))
    tracking.log_table(run_id, {"digit": digits, "accuracy": evaluation.per_class_accuracy},
                       "tables/per_class_accuracy.json")
    confusion = {"true": digits, **{f"predicted_{p}": [row[p] for row in evaluation.confusion] for p in digits}}
    tracking.log_table(run_id, confusion, "tables/confusion_matrix.json")
    classifier = stages.load_classifier(config, classified.path, Placement.of(config.runtime))
    logged = tracking.log_classifier(run_id, classifier, register=register_model)
    if logged.version is not None:
        preset, changes = changed_fields(config)
        registry.describe_model()
        registry.describe_version(registry.VersionCard(
            version=logged.version, run_id=run_id, flow_run=prefect_flow_run_link(), dataset=dataset.name,
            dataset_digest=dataset.digest, preset=preset, changes=changes, test_accuracy=evaluation.accuracy,
            noisy_accuracy=evaluation.noisy_accuracy))
        crown_first_version(logged.version, run_id)

    reference = stages.reference_stage(config, Path(dataset.raw_dir), classified.path, evaluation.accuracy)
    tracking.log_text(run_id, reference.model_dump_json(), REFERENCE_ARTIFACT)

    timing = Timing(pretrain_s=pretrained.seconds, classifier_s=classified.seconds,
                    pretrain_loop_s=pretrained.loop_seconds, classifier_loop_s=classified.loop_seconds)
    tracking.log_metrics(run_id, timing_metrics(timing))
    summary = build_summary(pretrained.history, classified.history, evaluation.scores(), timing, run_id,
                            logged.uri)
    tracking.set_description(run_id, f"{context.description}\n\n{_results(summary)}")
    write_json(out / "summary.json", summary.model_dump())
    tracking.log_files(run_id, [out / "summary.json"], "")

    create_markdown_artifact(_markdown(summary), key="dae-experiment-summary", description="Key numbers of this run")
    create_table_artifact([{"digit": d, "accuracy_percent": round(a, 2)}
                           for d, a in enumerate(evaluation.per_class_accuracy)],
                          key="dae-per-class-accuracy", description="Per-class test accuracy")
    get_run_logger().info("test accuracy %.2f%%, run outputs in %s", evaluation.accuracy, out)
    return summary
