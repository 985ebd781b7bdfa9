"""The Prefect flows and their MLflow records, on tiny generated data, under one
session-wide Prefect test server and one temporary SQLite tracking store."""

from __future__ import annotations

import uuid

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from dae_core.config import build_config
from tests.conftest import TINY, make_dataset, runs_of, task_runs_of, unique_experiment

pytestmark = pytest.mark.usefixtures("prefect_server", "mlflow_store")


@pytest.fixture(scope="module")
def experiment_run(data_root, tmp_path_factory):
    from adapters import progress
    from flows.experiment import dae_experiment

    name = unique_experiment()
    with progress.listening(lambda event: PROGRESS.append((event.phase, event.step, event.total))):
        summary = dae_experiment(config=build_config("smoke", TINY), data_dir=str(data_root), download=False,
                                 experiment_name=name, work_dir=str(tmp_path_factory.mktemp("work")))
    return name, summary


PROGRESS: list[tuple[str, int, int]] = []


def test_the_caller_hears_every_epoch_of_its_run(experiment_run):
    pretrain_epochs, classifier_epochs = TINY["pretrain"]["epochs"], TINY["classifier"]["epochs"]
    assert PROGRESS == [("pretrain", epoch, pretrain_epochs) for epoch in range(1, pretrain_epochs + 1)] + [
        ("classifier", epoch, classifier_epochs) for epoch in range(1, classifier_epochs + 1)]


def test_the_prefect_graph_shows_the_pipeline_step_by_step(experiment_run):
    """Issue 35: each step of the design card is a task run of its own, in its order."""
    name, _ = experiment_run
    (run,) = runs_of(name)
    steps = [task_run.name.rsplit("-", 1)[0] for task_run in
             task_runs_of(run.data.tags["prefect.flow_run_id"], until="report")]
    assert steps == ["check-tracking", "fetch-dataset", "start-tracking", "pretrain", "encoder-surgery",
                     "train-classifier", "evaluate", "figures", "register-model", "crown-first-champion",
                     "monitoring-reference", "report"], steps


def test_experiment_records_params_metrics_and_tags(experiment_run):
    name, summary = experiment_run
    (run,) = runs_of(name)
    assert run.info.status == "FINISHED" and run.info.run_id == summary.mlflow_run_id
    params = run.data.params
    assert params["pretrain.optimizer"] == "adam" and params["pretrain.noise.std"] == "0.2"
    assert params["seed"] == "0" and params["dataset"] == "mnist"
    client = MlflowClient()
    mse = client.get_metric_history(run.info.run_id, "pretrain/mse")
    assert [m.step for m in mse] == list(range(1, TINY["pretrain"]["epochs"] + 1))
    assert [m.value for m in mse] == pytest.approx(summary.pretrain.mse)
    for key in ("classifier/train_loss", "classifier/test_accuracy"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3]
    metrics = run.data.metrics
    assert metrics["test/accuracy"] == pytest.approx(summary.test.accuracy)
    assert metrics["test/noisy_accuracy"] == pytest.approx(summary.test.noisy_accuracy)
    assert [metrics[f"test/accuracy_class_{d}"] for d in range(10)] == pytest.approx(
        summary.test.per_class_accuracy)
    tags = run.data.tags
    assert uuid.UUID(tags["prefect.flow_run_id"]) and tags["prefect.flow_run_name"] == run.info.run_name
    assert run.info.run_name == "lecture-seed0"  # TINY differs least from the lecture preset
    dataset = run.inputs.dataset_inputs[0].dataset
    assert dataset.name == "mnist" and len(dataset.digest) > 8


def test_the_ui_opens_the_experiment_on_its_training_runs_and_each_run_says_what_it_was(experiment_run):
    name, summary = experiment_run
    experiment = mlflow.get_experiment_by_name(name)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    run = MlflowClient().get_run(summary.mlflow_run_id)
    description = run.data.tags["mlflow.note.content"]
    assert "preset `lecture`" in description and "changed fields: `data.batch_size` = 40" in description
    assert f"test accuracy: **{summary.test.accuracy:.2f}%**" in description
    assert "Prefect flow run: " in description


def test_a_run_records_system_metrics(experiment_run):
    _, summary = experiment_run
    metrics = MlflowClient().get_run(summary.mlflow_run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)


def test_experiment_logs_figures_tables_and_a_loadable_registered_model(experiment_run):
    name, summary = experiment_run
    client = MlflowClient()
    run_id = summary.mlflow_run_id
    figures = {f.path.split("/")[-1] for f in client.list_artifacts(run_id, "figures")}
    assert {"encoder_weights_before.png", "encoder_weights_after.png", "encoder_weights_change.png",
            "decoder_weights.png", "reconstructions.png", "confusion_matrix.png",
            "per_class_accuracy.png"} <= figures
    tables = {f.path.split("/")[-1] for f in client.list_artifacts(run_id, "tables")}
    assert tables == {"per_class_accuracy.json", "confusion_matrix.json"}
    versions = client.search_model_versions("name='dae-mnist-classifier'")
    assert run_id in {v.run_id for v in versions}
    # The model lives in the run's experiment (not "Default", where a worker may not write).
    (logged,) = mlflow.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id],
                                            filter_string=f"source_run_id = '{run_id}'", output_format="list")
    assert logged.name == "classifier" and logged.params["seed"] == client.get_run(run_id).data.params["seed"]
    model = mlflow.pytorch.load_model(summary.model_uri)
    probabilities = model(torch.rand(5, 784))
    assert probabilities.shape == (5, 10) and (probabilities >= 0).all()
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(5), atol=1e-5)


def test_summary_contract(experiment_run):
    _, summary = experiment_run
    dumped = summary.model_dump()
    assert set(dumped) >= {"pretrain", "classifier", "test", "timing", "mlflow_run_id", "model_uri"}
    assert len(summary.pretrain.mse) == TINY["pretrain"]["epochs"]
    assert len(summary.classifier.train_loss) == len(summary.classifier.test_accuracy) == 3
    assert len(summary.test.per_class_accuracy) == 10
    assert set(dumped["timing"]) == {"pretrain_s", "classifier_s", "pretrain_loop_s", "classifier_loop_s"}
    for phase in ("pretrain", "classifier"):
        assert 0 < dumped["timing"][f"{phase}_loop_s"] < dumped["timing"][f"{phase}_s"]


def test_an_invalid_parameter_is_refused_before_any_task_runs(data_root, tmp_path):
    from prefect.exceptions import ParameterTypeError

    from flows.experiment import dae_experiment

    name = unique_experiment()
    with pytest.raises(ParameterTypeError, match="lr"):
        dae_experiment(config={"pretrain": {"lr": -1}}, data_dir=str(data_root), experiment_name=name,
                       work_dir=str(tmp_path))
    assert runs_of(name) == [] and not any(tmp_path.iterdir())


def test_a_failing_task_leaves_the_mlflow_run_failed(data_root, tmp_path, monkeypatch):
    from dae_core import stages
    from flows.experiment import dae_experiment

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(stages, "classifier_stage", broken)
    name = unique_experiment()
    with pytest.raises(RuntimeError, match="disk on fire"):
        dae_experiment(config=build_config("smoke", TINY), data_dir=str(data_root), download=False,
                       experiment_name=name, work_dir=str(tmp_path))
    (run,) = runs_of(name)
    assert run.info.status == "FAILED"
    assert len(MlflowClient().get_metric_history(run.info.run_id, "pretrain/mse")) == TINY["pretrain"]["epochs"]


def test_a_second_run_reuses_the_cached_dataset(tmp_path, monkeypatch):
    from tasks import data as data_tasks
    from tasks.data import fetch_dataset

    data_root = tmp_path  # a folder no earlier test has cached
    make_dataset(data_root)

    calls = []
    original = data_tasks.file_digest
    monkeypatch.setattr(data_tasks, "file_digest", lambda folder: calls.append(folder) or original(folder))
    first = fetch_dataset(dataset="mnist", data_dir=str(data_root), download=False)
    second = fetch_dataset(dataset="mnist", data_dir=str(data_root), download=False)
    assert first == second and len(calls) == 1  # the second call came from the cache
    touched = data_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    touched.write_bytes(touched.read_bytes())  # new mtime: the cached digest must not be trusted
    fetch_dataset(dataset="mnist", data_dir=str(data_root), download=False)
    assert len(calls) == 2


@pytest.mark.slow  # a whole grid / three retrains: CI runs it, the quick loop does not
def test_compare_creates_a_parent_and_a_child_per_cell_and_seed(data_root, tmp_path):
    from flows.compare import dae_compare

    name = unique_experiment()
    # parallel=2: cells share the process, as `dae compare --parallel 2` runs them.
    result = dae_compare(base=build_config("smoke", TINY), seeds=2, cells=["adam-noise", "no-pretraining"],
                         parallel=2,
                         data_dir=str(data_root), download=False, experiment_name=name,
                         work_dir=str(tmp_path))
    (parent,) = runs_of(name, "tags.`dae.role` = 'comparison'")
    children = runs_of(name, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert sorted((c.data.tags["dae.cell"], c.data.params["seed"]) for c in children) == [
        ("adam-noise", "0"), ("adam-noise", "1"), ("no-pretraining", "0"), ("no-pretraining", "1")]
    assert sorted(c.info.run_name for c in children) == [
        "adam-noise-seed0", "adam-noise-seed1", "no-pretraining-seed0", "no-pretraining-seed1"]
    assert parent.info.run_name == "compare-lecture-2cells-2seeds"
    assert "| no-pretraining | final_accuracy |" in parent.data.tags["mlflow.note.content"]
    assert {c.data.params["pretrain.epochs"] for c in children} == {str(TINY["pretrain"]["epochs"]), "0"}
    artifacts = {f.path for f in MlflowClient().list_artifacts(parent.info.run_id, "comparison")}
    assert "comparison/comparison.csv" in artifacts and "comparison/test_accuracy_by_cell.png" in artifacts
    rows = {(r.cell, r.metric): r for r in result.rows}
    assert rows[("adam-noise", "final_accuracy")].n == 2
    assert "| no-pretraining | final_accuracy |" in result.table_markdown


@pytest.fixture
def fresh_registry(tmp_path, track_at):
    """A store of its own: alias decisions must not see other tests' model versions."""
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    track_at(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.slow  # a whole grid / three retrains: CI runs it, the quick loop does not
def test_retrain_sets_champion_then_promotes_only_by_the_margin(data_root, tmp_path, fresh_registry):
    from flows.retrain import dae_retrain

    config = build_config("smoke", {**TINY, "pretrain": {**TINY["pretrain"], "epochs": 3}})
    common = {"config": config, "data_dir": str(data_root), "download": False,
              "experiment_name": unique_experiment(), "work_dir": str(tmp_path / "work")}

    def alias(name: str) -> str:  # MLflow answers an int here; versions are strings in dae
        return str(fresh_registry.get_model_version_by_alias("dae-mnist-classifier", name).version)

    first = dae_retrain(margin=0.1, **common).decision
    assert first.action == "first-champion" and alias("champion") == first.new_version
    second = dae_retrain(margin=0.1, **common).decision
    # Same seed, same numbers: a gain of 0 points cannot clear a 0.1-point margin.
    assert second.new_accuracy == first.new_accuracy and second.action == "challenger"
    assert alias("champion") == first.new_version and alias("challenger") == second.new_version
    third = dae_retrain(margin=0.0, **common).decision
    assert third.action == "promoted" and alias("champion") == third.new_version
    # One recorded move each time @champion moved: crowned, then promoted.
    from adapters.champion import champion_history

    assert [(m.previous, m.version) for m in champion_history()] == [(None, first.new_version),
                                                                     (first.new_version, third.new_version)]
    run_id = fresh_registry.get_model_version("dae-mnist-classifier", second.new_version).run_id
    tags = fresh_registry.get_run(run_id).data.tags
    assert tags["dae.retrain.action"] == "challenger" and "margin" in tags["dae.retrain.reason"]
