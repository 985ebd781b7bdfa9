"""``dae-retrain``: train with the production config, then let the result challenge the
registered champion on the same test set."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from adapters.champion import CHAMPION
from adapters.model_registry import alias_version, model_version_of_run
from adapters.settings import Settings
from dae_core.config import LECTURE_CONFIG, ExperimentConfig, run_name
from dae_core.summary import DEFAULT_EXPERIMENT, RunSummary
from flows.experiment import dae_experiment
from tasks.champion import Decision, apply_decision, decide, score_version
from tasks.data import fetch_dataset


class RetrainOutcome(BaseModel):
    summary: RunSummary
    decision: Decision


def _flow_run_name() -> str:
    """``retrain-<preset>-seed<N>``, also the name of its training run."""
    config = ExperimentConfig.model_validate(flow_run.parameters.get("config", LECTURE_CONFIG))
    return f"retrain-{run_name(config)}"


@flow(name="dae-retrain", flow_run_name=_flow_run_name)
def dae_retrain(
    config: ExperimentConfig = LECTURE_CONFIG,
    margin: Annotated[float, Field(ge=0.0, le=100.0)] = 0.1,
    data_dir: str | None = None,
    download: bool = True,
    experiment_name: str = DEFAULT_EXPERIMENT,
    work_dir: str | None = None,
) -> RetrainOutcome:
    """``margin`` is in accuracy points. Aliases move only after the training run has
    finished and its model version is registered; a failure anywhere before leaves
    both aliases where they were."""
    data_dir = data_dir or str(Settings.from_env().data_dir)
    summary = dae_experiment(config=config, data_dir=data_dir, download=download, experiment_name=experiment_name,
                             work_dir=work_dir, register_model=True, name=flow_run.name)
    dataset = fetch_dataset(config.data.dataset, data_dir, download)
    new_version = model_version_of_run(summary.mlflow_run_id)
    if new_version is None:
        raise RuntimeError(f"run {summary.mlflow_run_id} registered no model version")
    champion = alias_version(CHAMPION)
    if champion == new_version:  # crowned by its own run as the first version: no champion before it
        champion = None
    decision = decide(
        new_version, score_version(new_version, config, dataset),
        champion, score_version(champion, config, dataset) if champion else None, margin,
    )
    return RetrainOutcome(summary=summary, decision=apply_decision(decision, summary.mlflow_run_id))
