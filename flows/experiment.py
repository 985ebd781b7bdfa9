"""``dae-experiment``: one configuration end to end."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from adapters.settings import Settings
from dae_core.config import LECTURE_CONFIG, ExperimentConfig, run_name
from dae_core.summary import DEFAULT_EXPERIMENT, RunSummary
from tasks.champion import crown_first_version
from tasks.data import fetch_dataset
from tasks.report import draw_figures, record_reference, register_classifier, report
from tasks.run import check_tracking, start_tracking, tracked
from tasks.training import encoder_surgery, evaluate, pretrain, train_classifier


def _flow_run_name() -> str:
    """``name`` if given, else ``<cell>-seed<N>`` or ``<preset>-seed<N>``: the flow run and
    its MLflow run carry the same name."""
    parameters = flow_run.parameters
    config = ExperimentConfig.model_validate(parameters.get("config", LECTURE_CONFIG))
    return parameters.get("name") or run_name(config, parameters.get("run_label"))


@flow(name="dae-experiment", log_prints=False, flow_run_name=_flow_run_name)
def dae_experiment(
    config: ExperimentConfig = LECTURE_CONFIG,
    data_dir: str | None = None,
    download: bool = True,
    experiment_name: str = DEFAULT_EXPERIMENT,
    work_dir: str | None = None,
    register_model: bool = True,
    parent_run_id: str | None = None,
    run_label: str | None = None,
    name: str | None = None,
) -> RunSummary:
    """Pretrain a denoising autoencoder, graft a classifier on its encoder, train,
    evaluate, draw, register (the first version becomes champion), record the monitoring
    reference and report to MLflow. ``config`` defaults to the lecture preset; ``name``
    names the flow run and the MLflow run (default ``<preset>-seed<N>``)."""
    check_tracking()
    settings = Settings.from_env()
    work_dir = work_dir or str(settings.work_dir)
    dataset = fetch_dataset(config.data.dataset, data_dir or str(settings.data_dir), download)
    started = start_tracking(config, dataset, experiment_name, work_dir, settings.worker_name, parent_run_id,
                             run_label)
    with tracked(started) as context:
        pretrained = pretrain(config, dataset, context)
        initial = encoder_surgery(config, pretrained.path, context)
        classified = train_classifier(config, dataset, initial, context)
        evaluation = evaluate(config, dataset, classified.path, context)
        draw_figures(config, dataset, pretrained, classified, evaluation, context)
        model = register_classifier(config, dataset, classified, evaluation, context, register_model)
        if model.version is not None:
            crown_first_version(model.version, context.mlflow_run_id)
        record_reference(config, dataset, classified, evaluation, context)
        return report(pretrained, classified, evaluation, model, context)


def cell_parameters(config: ExperimentConfig, cell: str, parent_run_id: str, download: bool,
                    experiment_name: str) -> dict[str, Any]:
    """``dae_experiment``'s parameters for one cell of a comparison, the same for a call in
    this process and for a deployment run on the work pool (where each worker's
    environment supplies the data and work folders)."""
    return {"config": config, "download": download, "experiment_name": experiment_name,
            "register_model": False, "parent_run_id": parent_run_id, "run_label": cell}
