"""Tasks of the ``dae-score`` flow: score a batch with a registered model, and record it
as an MLflow run of its own (predictions CSV, accuracy where labels are known) with a
summary table in Prefect."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run

from adapters import mlflow_runs, model_registry
from adapters.tags import MODEL_URI, MODEL_VERSION, MONITOR_VERDICT, ROLE, ROLE_SCORING, flow_run_tags
from dae_core import figures
from dae_core.monitoring import (
    REFERENCE_ARTIFACT,
    BatchProfile,
    MonitorReport,
    Reference,
    Thresholds,
    monitor,
)
from dae_core.scoring import Batch, ScoringSummary, prediction_rows, read_batch, scores
from dae_core.shapes import NUM_CLASSES
from dae_core.summary import REGISTERED_MODEL
from tasks.run import prefect_flow_run_link

PREDICTIONS_ARTIFACT = "predictions/predictions.csv"


@dataclass(frozen=True)
class ScoredBatch:
    batch: Batch
    probabilities: np.ndarray  # (N, 10)
    model_uri: str
    version: model_registry.ModelVersion | None  # the registered version that scored it, resolved once

    @property
    def model_version(self) -> str | None:
        return self.version.version if self.version is not None else None


# Not cached: the inputs name files whose contents may change between runs.
@task(name="score-batch", cache_policy=NO_CACHE)
def score_batch(source: str, labels_file: str | None, model_uri: str) -> ScoredBatch:
    logger = get_run_logger()
    batch = read_batch(Path(source), Path(labels_file) if labels_file else None)
    for line in batch.skipped:
        logger.warning("skipped %s", line)
    # The version resolved once and loaded as such: an alias may move in between.
    version = model_registry.resolve(model_uri)
    model = model_registry.load_serving_model(version.uri if version is not None else model_uri)
    pixels = batch.digits.pixels.reshape(len(batch.digits.names), -1).astype(np.float32)
    scored = ScoredBatch(batch, np.asarray(model.predict(pixels)), model_uri, version)
    logger.info("scoring %d images with %s (version %s)", len(pixels), model_uri, scored.model_version)
    return scored


def _per_digit_table(scored: ScoredBatch, per_class: list[float] | None) -> list[dict]:
    predicted = np.bincount(scored.probabilities.argmax(axis=1), minlength=NUM_CLASSES)
    labelled = (np.bincount(scored.batch.labels, minlength=NUM_CLASSES) if scored.batch.labels is not None
                else [None] * NUM_CLASSES)
    return [{"digit": digit, "predicted": int(predicted[digit]),
             "labelled": None if labelled[digit] is None else int(labelled[digit]),
             "accuracy_percent": None if per_class is None or math.isnan(per_class[digit])
             else round(per_class[digit], 2)}
            for digit in range(NUM_CLASSES)]


# The event a drifting batch emits; `dae setup`'s automation answers it with a retrain.
DRIFT_EVENT = "dae.monitor.drift"


def _monitor(scored: ScoredBatch, accuracy: float | None, thresholds: Thresholds, run_id: str,
             out: Path) -> MonitorReport | None:
    """The batch against its model's reference, logged to the scoring run: ``monitor/*``
    metrics, the thresholds as params, a figure, the verdict tag; a drift emits an event."""
    logger = get_run_logger()
    # The reference of the run that trained the version, found from the version already resolved.
    stored = mlflow_runs.load_text(scored.version.run_id, REFERENCE_ARTIFACT) \
        if scored.version is not None and scored.version.run_id else None
    if stored is None:
        logger.warning("no monitoring reference for %s: batch not monitored", scored.model_uri)
        return None
    reference = Reference.model_validate_json(stored)
    pixels = scored.batch.digits.pixels.reshape(len(scored.batch.digits.names), -1).astype(np.float32)
    batch = BatchProfile.of(pixels, scored.probabilities)
    report = monitor(batch, accuracy, reference, thresholds)
    mlflow_runs.log_metrics(run_id, report.metrics())
    mlflow_runs.log_params(run_id, {f"monitor.{key}": value for key, value in thresholds.model_dump().items()})
    figure = figures.drift_panels(batch.brightness, reference.brightness, batch.predicted_distribution.tolist(),
                                  reference.predicted_distribution, report.verdict, out / "drift.png")
    mlflow_runs.log_files(run_id, [figure], "monitoring")
    mlflow_runs.set_tags(run_id, {MONITOR_VERDICT: report.verdict})
    if report.verdict == "drift":
        over = [check.name for check in report.checks if check.drift]
        logger.warning("batch drifts from the model's reference: %s", ", ".join(over))
        emit_event(event=DRIFT_EVENT,
                   resource={"prefect.resource.id": f"mlflow.registered-model.{REGISTERED_MODEL}",
                             "prefect.resource.name": REGISTERED_MODEL},
                   payload={"mlflow_run_id": run_id, "model_version": scored.model_version or "", "checks": over})
    return report


@task(name="report-scoring", cache_policy=NO_CACHE)
def report_scoring(scored: ScoredBatch, source: str, labels_file: str | None, experiment: str,
                   work_dir: str, thresholds: Thresholds) -> ScoringSummary:
    tags = {ROLE: ROLE_SCORING, MODEL_URI: scored.model_uri, MODEL_VERSION: scored.model_version or "",
            **flow_run_tags()}
    run_id = mlflow_runs.start_run(experiment, flow_run.name or "score", tags)
    with mlflow_runs.ends_run(run_id):
        images = len(scored.batch.digits.names)
        mlflow_runs.log_params(run_id, {"source": source, "labels_file": labels_file or "",
                                     "model_uri": scored.model_uri, "images": images})
        measured = scores(scored.probabilities, scored.batch.labels) if scored.batch.labels is not None else None
        metrics = {"score/images": images, "score/skipped": len(scored.batch.skipped)}
        if measured is not None:
            metrics["score/accuracy"] = measured.accuracy
            metrics.update({f"score/class_{digit}_accuracy": value
                            for digit, value in enumerate(measured.per_class_accuracy) if not math.isnan(value)})
        mlflow_runs.log_metrics(run_id, metrics)
        csv = Path(work_dir).resolve() / "scoring" / run_id / Path(PREDICTIONS_ARTIFACT).name
        csv.parent.mkdir(parents=True, exist_ok=True)
        monitored = _monitor(scored, measured.accuracy if measured else None, thresholds, run_id, csv.parent)
        pd.DataFrame(prediction_rows(scored.batch, scored.probabilities)).to_csv(csv, index=False)
        mlflow_runs.log_files(run_id, [csv], str(Path(PREDICTIONS_ARTIFACT).parent))
        if scored.batch.skipped:
            mlflow_runs.log_text(run_id, "\n".join(scored.batch.skipped) + "\n", "predictions/skipped.txt")
        accuracy = f"{measured.accuracy:.2f}%" if measured else "no labels"
        verdict = monitored.verdict if monitored else "not monitored (no reference)"
        headline = (f"**Scored {images} images** from `{source}` with `{scored.model_uri}` (version "
                    f"{scored.model_version}): accuracy {accuracy}; {len(scored.batch.skipped)} files skipped; "
                    f"monitoring: **{verdict}**.\n"
                    f"- Prefect flow run: {prefect_flow_run_link()}")
        mlflow_runs.set_description(run_id, headline)
        create_table_artifact(_per_digit_table(scored, measured.per_class_accuracy if measured else None),
                              key="dae-scoring", description="Predictions per digit (and accuracy where labelled)")
        create_markdown_artifact(f"# Batch scoring\n\n{headline}\n- MLflow run: `{run_id}`, predictions in "
                                 f"`{PREDICTIONS_ARTIFACT}`", key="dae-scoring-summary")
    return ScoringSummary(mlflow_run_id=run_id, model_uri=scored.model_uri, model_version=scored.model_version,
                          images=images, skipped=scored.batch.skipped,
                          accuracy=measured.accuracy if measured else None,
                          per_class_accuracy=measured.per_class_accuracy if measured else None,
                          predictions_csv=PREDICTIONS_ARTIFACT, monitor=monitored)
