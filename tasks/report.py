"""The report task: figures, tables and the model into MLflow; a summary for people in
the Prefect UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from dae_core import stages
from dae_core.checkpoint import write_json
from dae_core.config import ExperimentConfig
from dae_core.evaluate import Evaluation
from dae_core.summary import build_summary
from tasks import tracking
from tasks.data import DatasetRef
from tasks.run import RunContext


def _run_link(run_id: str) -> str:
    """A clickable MLflow UI link where the tracking URI is a server, else the run id."""
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        experiment = tracking.client().get_run(run_id).info.experiment_id
        return f"[{run_id}]({uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id})"
    return f"`{run_id}` in `{uri}` (open with `mlflow ui --backend-store-uri {uri}`)"


def _markdown(summary: dict[str, Any], run_id: str) -> str:
    test = summary["test"]
    mse = summary["pretrain"]["mse"]
    accuracy = summary["classifier"]["test_accuracy"]
    return "\n".join([
        "# DAE experiment",
        f"- MLflow run: {_run_link(run_id)}",
        f"- test accuracy: **{test['accuracy']:.2f}%** (noisy test set: {test['noisy_accuracy']:.2f}%)",
        f"- pretraining MSE: {mse[0]:.4f} (epoch 1) -> {mse[-1]:.4f} (epoch {len(mse)})" if mse
        else "- pretraining: skipped (random encoder)",
        f"- classifier test accuracy: {accuracy[0]:.2f}% (epoch 1) -> {accuracy[-1]:.2f}% (epoch {len(accuracy)})",
        f"- training time: pretraining {summary['timing']['pretrain_s']:.1f} s, "
        f"classifier {summary['timing']['classifier_s']:.1f} s",
    ])


@task(name="report")
def report(config: ExperimentConfig, dataset: DatasetRef, pretrained: dict[str, Any],
           classified: dict[str, Any], evaluation: dict[str, Any], context: RunContext,
           register_model: bool = True) -> dict[str, Any]:
    run_id = context.mlflow_run_id
    result = Evaluation(**evaluation)
    out = Path(context.out_dir)
    pictures = stages.figures_stage(config, Path(dataset.raw_dir), Path(pretrained["path"]),
                                    Path(classified["path"]), result, out / "figures")
    tracking.log_files(run_id, pictures, "figures")
    per_class = {"digit": list(range(10)), "accuracy": result.per_class_accuracy}
    tracking.log_table(run_id, per_class, "tables/per_class_accuracy.json")
    confusion = {"true": list(range(10))}
    confusion.update({f"predicted_{p}": [row[p] for row in result.confusion] for p in range(10)})
    tracking.log_table(run_id, confusion, "tables/confusion_matrix.json")
    model_uri = tracking.log_classifier(run_id, stages.load_classifier(config, Path(classified["path"])),
                                        register=register_model)

    summary = build_summary(pretrained["history"], classified["history"], result,
                            pretrained["seconds"], classified["seconds"],
                            pretrained["loop_seconds"], classified["loop_seconds"])
    summary["mlflow_run_id"] = run_id
    tracking.log_metrics(run_id, {f"timing/{key}": value for key, value in summary["timing"].items()})
    summary["model_uri"] = model_uri
    write_json(out / "summary.json", summary)
    tracking.log_files(run_id, [out / "summary.json"], "")

    create_markdown_artifact(_markdown(summary, run_id), key="dae-experiment-summary",
                             description="Key numbers of this run")
    create_table_artifact([{"digit": d, "accuracy_percent": round(a, 2)}
                           for d, a in enumerate(result.per_class_accuracy)],
                          key="dae-per-class-accuracy", description="Per-class test accuracy")
    get_run_logger().info("test accuracy %.2f%%, run outputs in %s", result.accuracy, out)
    return summary
