"""``dae-score``: score a folder of pictures or an IDX file with a registered model (the
champion by default), as an MLflow run of its own. Deployed as ``dae-score/batch``."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from adapters.settings import Settings
from dae_core.monitoring import DEFAULT_THRESHOLDS, Thresholds
from dae_core.scoring import ScoringSummary
from dae_core.summary import CHAMPION_URI, SCORING_EXPERIMENT
from tasks.run import check_tracking
from tasks.scoring import report_scoring, score_batch


def _flow_run_name() -> str:
    """``score-<folder or file name>``."""
    return f"score-{Path(str(flow_run.parameters.get('source', ''))).name or 'batch'}"


@flow(name="dae-score", flow_run_name=_flow_run_name)
def dae_score(
    source: str,
    labels_file: str | None = None,
    model_uri: str = CHAMPION_URI,
    experiment_name: str = SCORING_EXPERIMENT,
    work_dir: str | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> ScoringSummary:
    """``source``: a folder of pictures (PNG, JPEG, ...; digit-named subfolders give labels)
    or an IDX images file (``labels_file``: its IDX labels). Writes the predictions CSV, and
    accuracy where labels are known, to an MLflow run tagged with the model version used, and
    compares the batch with the model's reference (``thresholds``: where each check calls
    drift); a drifting batch emits the event `dae setup`'s automation answers with a retrain."""
    check_tracking()
    scored = score_batch(source, labels_file, model_uri)
    return report_scoring(scored, source, labels_file, experiment_name,
                          work_dir or str(Settings.from_env().work_dir), thresholds)
