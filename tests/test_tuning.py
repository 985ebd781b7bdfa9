"""`dae tune` on tiny data: search spaces, the validation split, studies that prune,
write their runs and resume after a SIGKILL, and a proof that tuning never reads the test
split. The full tuned comparison is docs/comparison.md."""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from dae_core import setup as training_setup
from dae_core import stages
from dae_core.comparison import cell_config
from dae_core.config import ConfigError, build_config, nested_fields
from dae_core.data import hold_out, load_split
from dae_core.evaluate import evaluate
from dae_core.runtime import make_generator
from dae_core.setup import TrainingSetup
from dae_core.tuning import Dimension, cell_objectives, parse_dimension, search_space, train_trial
from tests.conftest import TINY, task_runs_of
from tests.gate import Gate
from tests.gate import command as gate_command

# Trials short enough for CI: 6 pretraining epochs on 200 training images, 40 held out.
QUICK = {**TINY, "data": {**TINY["data"], "validation_size": 40}, "pretrain": {**TINY["pretrain"], "epochs": 6}}


def test_search_spaces_parse_and_refuse_what_they_cannot_search():
    assert parse_dimension("pretrain.lr=log:0.1:1000") == Dimension("pretrain.lr", "log", 0.1, 1000.0)
    assert parse_dimension("pretrain.noise.enabled=choice:true,false").choices == (True, False)
    for bad, says in (("pretrain.lr=log:0:1", "LOW > 0"), ("pretrain.rate=log:1:2", "not a config field"),
                      ("seed=int:0:9", "not searched"), ("pretrain.lr=1e-3", "expected KEY="),
                      ("classifier.lr=float:2:1", "LOW < HIGH")):
        with pytest.raises(ConfigError, match=says):
            parse_dimension(bad)
    sgd = cell_config(build_config("smoke"), "sgd-noise", 0)
    assert search_space(sgd, [])[0] == Dimension("pretrain.lr", "log", 0.1, 1000.0), "SGD's best rate may exceed 10"
    with pytest.raises(ConfigError, match="vanilla SGD"):
        search_space(sgd, [parse_dimension("pretrain.momentum=float:0:0.9")])
    assert cell_config(sgd, "sgd-noise", 0, tuned=nested_fields({"pretrain.lr": 250.0})).pretrain.lr == 250.0


def test_the_validation_split_is_seeded_disjoint_and_leaves_the_rest_in_order(raw_dir):
    train = load_split(raw_dir, True)
    kept, held = hold_out(train, 40, torch.Generator().manual_seed(7))
    again, held_again = hold_out(train, 40, torch.Generator().manual_seed(7))
    assert len(kept) == len(train) - 40 and len(held) == 40
    assert torch.equal(held.images, held_again.images) and torch.equal(kept.labels, again.labels)
    rows = {bytes(image.numpy()) for image in train.images}
    assert {bytes(i.numpy()) for i in kept.images} | {bytes(i.numpy()) for i in held.images} == rows
    assert hold_out(train, 0, torch.Generator())[1] is None
    with pytest.raises(ConfigError, match="leaves no training images"):
        build_config("smoke", {"data": {"validation_size": 1000}})


@pytest.mark.usefixtures("prefect_server", "mlflow_store")
def test_validation_curves_are_logged_beside_the_test_ones_and_new_protocols_run(data_root, tmp_path):
    from flows.experiment import dae_experiment

    name = f"test-{uuid.uuid4().hex[:8]}"
    config = build_config("smoke", {**QUICK, "classifier": {**QUICK["classifier"], "freeze_encoder": True,
                                                              "train_noise": {"enabled": True}}})
    summary = dae_experiment(config=config, data_dir=str(data_root), download=False, experiment_name=name,
                             work_dir=str(tmp_path), register_model=False)
    client = MlflowClient()
    for key, epochs in (("pretrain/val_mse", 6), ("classifier/val_accuracy", 3), ("classifier/test_accuracy", 3)):
        assert [m.step for m in client.get_metric_history(summary.mlflow_run_id, key)] == list(range(1, epochs + 1))
    run = client.get_run(summary.mlflow_run_id)
    assert run.data.params["classifier.freeze_encoder"] == "True"
    assert run.data.params["data.validation_size"] == "40"


def test_a_frozen_encoder_stays_as_pretraining_left_it(raw_dir, tmp_path):
    config = build_config("smoke", {**QUICK, "classifier": {**QUICK["classifier"], "freeze_encoder": True}})
    pretrained = stages.pretrain_stage(config, raw_dir, tmp_path / "ae.pt", tmp_path / "ae-state.pt")
    initial = stages.surgery_stage(config, pretrained.path, tmp_path / "initial.pt")
    trained = stages.classifier_stage(config, raw_dir, initial, tmp_path / "clf.pt", tmp_path / "clf-state.pt")
    place = stages.Placement.of(config.runtime)
    before, after = (stages.load_classifier(config, path, place) for path in (initial, trained.path))
    assert torch.equal(before.encoder[0].weight, after.encoder[0].weight)
    assert not torch.equal(before.head[0].weight, after.head[0].weight)


def test_a_trial_trains_exactly_what_a_run_with_its_config_trains(raw_dir, tmp_path):
    """Trials and stages build their training from one TrainingSetup: per epoch, the values a
    trial reports are the ones the run's stages record, to the last bit."""
    config = build_config("smoke", {**QUICK, "classifier": {**QUICK["classifier"], "train_noise": {"enabled": True}}})
    pretrained = stages.pretrain_stage(config, raw_dir, tmp_path / "ae.pt", tmp_path / "ae-state.pt")
    initial = stages.surgery_stage(config, pretrained.path, tmp_path / "initial.pt")
    classified = stages.classifier_stage(config, raw_dir, initial, tmp_path / "clf.pt", tmp_path / "clf-state.pt")
    reported: dict[str, list[float]] = {"mse": [], "accuracy": []}
    values = train_trial(config, raw_dir, ("noisy-accuracy", "mse", "accuracy"),
                         lambda measured, _epoch, value: reported[measured].append(value))
    assert reported["mse"] == pretrained.history.val_mse and len(reported["mse"]) == 6
    assert reported["accuracy"] == classified.history.val_accuracy and len(reported["accuracy"]) == 3
    assert list(values) == ["noisy-accuracy", "mse", "accuracy"], "one value per objective, in their order"
    assert (values["mse"], values["accuracy"]) == (reported["mse"][-1], reported["accuracy"][-1])
    # Noisy accuracy: the trained classifier on the validation digits corrupted as the noisy test's are.
    setup = TrainingSetup.build(config, raw_dir)
    model = stages.load_classifier(config, classified.path, setup.place)
    noisy = evaluate(model, setup.validation_pixels, setup.validation.labels, config.evaluation.test_noise,
                     make_generator(config.seed, "noisy-validation", setup.place.device)).noisy_accuracy
    assert values["noisy-accuracy"] == noisy
    assert train_trial(config, raw_dir, ("mse",), lambda *_: None) == {"mse": reported["mse"][-1]}


def _tune_command(data_root: Path, work: Path, experiment: str, trials: int) -> list[str]:
    overrides = [f"--set=data.batch_size={QUICK['data']['batch_size']}", "--set=data.train_limit=null",
                 "--set=data.test_limit=null", "--set=data.validation_size=40", "--set=pretrain.epochs=6",
                 "--set=pretrain.hidden_units=64", "--set=runtime.threads=1"]
    return [str(Path(sys.executable).parent / "dae"), "tune", "--preset", "smoke", *overrides,
            "--cells", "adam-noise", "sgd-noise", "--trials", str(trials), "--experiment", experiment,
            "--no-download", "--data-dir", str(data_root), "--work-dir", str(work)]


def _env(tmp_path: Path) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DAE_"))}
    return {**inherited, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}


@pytest.mark.slow
def test_tuning_prunes_writes_its_runs_and_resumes_after_a_sigkill(data_root, tmp_path):
    """A study of 6 trials per cell, killed while a trial runs after others have ended (held
    at the start of the eighth: adam-noise's six done, sgd-noise's second begun); the same
    command continues it: the finished trials are kept, the killed one's run ends FAILED,
    every cell ends with 6 trials under the same parent run, and the progress bar starts at
    the trials counted before the kill."""
    import optuna
    from optuna.trial import TrialState

    env, work, experiment = _env(tmp_path), tmp_path / "work", "tune-test"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    gate = Gate(tmp_path / "gate")
    first = subprocess.Popen(gate_command("dae_core.tuning:train_trial", 8, tmp_path / "gate",
                                          *_tune_command(data_root, work, experiment, 6)[1:]),
                             env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    client = MlflowClient(tracking_uri=store)
    gate.wait_reached(first, 600, "the eighth trial to start")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    experiment_ = client.get_experiment_by_name(experiment)
    held = client.search_runs([experiment_.experiment_id], "tags.`dae.role` = 'trial'")
    assert sorted(run.info.status == "RUNNING" for run in held) == [False] * 7 + [True], "held in the eighth trial"
    storage, counted = f"sqlite:///{tmp_path / 'optuna.db'}", (TrialState.COMPLETE, TrialState.PRUNED)
    counted_before = sum(len(optuna.load_study(study_name=name, storage=storage).get_trials(states=counted))
                         for name in optuna.get_all_study_names(storage))

    done = subprocess.run(_tune_command(data_root, work, experiment, 6) + ["--summary-json", str(tmp_path / "t.json")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "dae compare --tuned" in done.stdout
    report = json.loads((tmp_path / "t.json").read_text())
    (parent,) = client.search_runs([experiment_.experiment_id], "tags.`dae.role` = 'tuning'")
    assert report["mlflow_run_id"] == parent.info.run_id and parent.info.status == "FINISHED"
    assert "dae.resumed_at" in parent.data.tags
    shown = [int(count) for count in re.findall(r" (\d+)/12 \[", done.stderr)]
    # Each cell reports the trials it held as it starts (the cells run one after the other), so
    # the bar passes through the count before the kill and ends full, not at this run's share.
    assert counted_before == 7 and counted_before in shown and shown[-1] == 12, shown
    trials = client.search_runs([experiment_.experiment_id], "tags.`dae.role` = 'trial'")
    states = {}
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        states.setdefault(run.data.tags["dae.cell"], []).append(run.data.tags.get("dae.trial_state"))
    assert "killed" in states["adam-noise"] + states["sgd-noise"], "the killed trial's run must end FAILED"
    for cell in ("adam-noise", "sgd-noise"):
        counted = [state for state in states[cell] if state in ("complete", "pruned", "diverged")]
        assert len(counted) == 6 and report["cells"][cell]["trials"] == 6
        assert set(report["cells"][cell]["best_params"]) == {"pretrain.lr"}
    assert sum(cell["pruned"] for cell in report["cells"].values()) >= 1, "6 trials of wide ranges prune some"
    figures = {f.path for f in client.list_artifacts(parent.info.run_id, "figures/tuning")}
    assert {"figures/tuning/adam-noise-history.png", "figures/tuning/sgd-noise-slice.png"} <= figures
    # The SGD study may propose rates beyond the old cap of 10.
    assert max(float(run.data.params["pretrain.lr"]) for run in trials if run.data.tags["dae.cell"] == "sgd-noise") > 10

    # Once more: the studies are full, so nothing trains and the answer is the same tuning.
    again = subprocess.run(_tune_command(data_root, work, experiment, 6) + ["--summary-json", str(tmp_path / "a.json")],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"already tuned: nothing trained, the studies hold 6 trials per cell from MLflow run {parent.info.run_id}" \
        in again.stdout
    repeated = json.loads((tmp_path / "a.json").read_text())
    assert repeated == {**report, "reused": True}
    assert len(client.search_runs([experiment_.experiment_id])) == 1 + len(trials), "no new run"


@pytest.mark.usefixtures("prefect_server", "mlflow_store")
def test_tuning_never_reads_the_test_split_and_compare_uses_what_it_found(data_root, tmp_path, monkeypatch):
    from flows.compare import dae_compare
    from flows.tune import dae_tune

    real_load_split = training_setup.load_split

    def training_images_only(directory, train, limit=None):
        assert train, "tuning opened the test split"
        return real_load_split(directory, train, limit)

    name = f"test-{uuid.uuid4().hex[:8]}"
    with monkeypatch.context() as patched:
        patched.setattr(training_setup, "load_split", training_images_only)
        report = dae_tune(base=build_config("smoke", QUICK), cells=["sgd-noise"], trials=2, objective="accuracy",
                          data_dir=str(data_root), download=False, experiment_name=name, work_dir=str(tmp_path))
    best = report.cells["sgd-noise"].best_params["pretrain.lr"]
    # Each trial is a task run of its own under its cell's, with the state it ended in.
    parent = MlflowClient().get_run(report.mlflow_run_id)
    steps = task_runs_of(parent.data.tags["prefect.flow_run_id"], until="report-tuning")
    (cell,) = [step for step in steps if step.name == "tune sgd-noise"]
    trials = [step for step in steps if step.name.startswith("sgd-noise trial ")]
    assert sorted(step.name for step in trials) == ["sgd-noise trial 0", "sgd-noise trial 1"]
    assert all(step.state.name in ("Completed", "Pruned", "Diverged") for step in trials)
    assert all(step.task_inputs["__parents__"][0].id == cell.id for step in trials)
    assert not report.reused
    # The same tuning in another experiment runs trials of its own there; run again, it is reused.
    other = f"{name}-other"
    elsewhere = dae_tune(base=build_config("smoke", QUICK), cells=["sgd-noise"], trials=2, objective="accuracy",
                         data_dir=str(data_root), download=False, experiment_name=other, work_dir=str(tmp_path))
    assert not elsewhere.reused and elsewhere.mlflow_run_id != report.mlflow_run_id
    other_id = MlflowClient().get_experiment_by_name(other).experiment_id
    assert len(MlflowClient().search_runs([other_id], "tags.`dae.role` = 'trial'")) == 2
    repeated = dae_tune(base=build_config("smoke", QUICK), cells=["sgd-noise"], trials=2, objective="accuracy",
                        data_dir=str(data_root), download=False, experiment_name=other, work_dir=str(tmp_path))
    assert repeated.reused and repeated.mlflow_run_id == elsewhere.mlflow_run_id
    assert repeated.cells == elsewhere.cells
    compared = dae_compare(base=build_config("smoke", {**QUICK, "data": {**QUICK["data"], "validation_size": 0}}),
                           seeds=1, cells=["sgd-noise"], data_dir=str(data_root), download=False,
                           experiment_name=name, work_dir=str(tmp_path), tuned_run_id=report.mlflow_run_id)
    (child,) = [MlflowClient().get_run(ref.mlflow_run_id) for ref in compared.runs]
    assert float(child.data.params["pretrain.lr"]) == pytest.approx(best)
    parent = MlflowClient().get_run(compared.mlflow_run_id)
    assert parent.data.tags["dae.tuned_from"] == report.mlflow_run_id
    with pytest.raises(ConfigError, match="tuned for accuracy alone, which has a best and no front"):
        dae_compare(base=build_config("smoke", QUICK), seeds=1, cells=["sgd-noise"], data_dir=str(data_root),
                    download=False, experiment_name=name, work_dir=str(tmp_path), tuned_run_id=report.mlflow_run_id,
                    tuned_point="knee")


@pytest.mark.usefixtures("prefect_server", "mlflow_store")
def test_a_tuning_of_clean_and_noisy_accuracy_maps_each_front_continues_and_compare_takes_a_named_point(
        data_root, tmp_path, monkeypatch):
    """Two objectives: the study is Optuna's multi-objective one, scored on validation
    digits only; a trial whose classifier diverges (rate 10) is recorded and stays off the
    front; the parent run logs the front as a table and a figure; a larger budget continues
    the study; `dae compare --point` trains the named point of the front and records which."""
    from flows.compare import dae_compare
    from flows.tune import dae_tune

    real_load_split = training_setup.load_split

    def training_images_only(directory, train, limit=None):
        assert train, "tuning opened the test split"
        return real_load_split(directory, train, limit)

    name = f"test-{uuid.uuid4().hex[:8]}"
    tune = functools.partial(dae_tune, base=build_config("smoke", QUICK), cells=["adam-noise"],
                             objective=["accuracy", "noisy-accuracy"],
                             space=["pretrain.noise.std=float:0.05:0.5", "classifier.lr=choice:0.1,0.5,10"],
                             data_dir=str(data_root), download=False, experiment_name=name, work_dir=str(tmp_path))
    with monkeypatch.context() as patched:
        patched.setattr(training_setup, "load_split", training_images_only)
        first = tune(trials=4)
    client = MlflowClient()
    trials = client.search_runs([client.get_experiment_by_name(name).experiment_id], "tags.`dae.role` = 'trial'")
    states = collections.Counter(run.data.tags["dae.trial_state"] for run in trials)
    assert states["diverged"] >= 1 and states["complete"] >= 2, f"the seeded sampler's four trials: {states}"
    result = first.cells["adam-noise"]
    assert result.objective == "accuracy+noisy-accuracy" and result.pruned == states["diverged"]
    diverged = {int(run.data.tags["dae.trial"]) for run in trials if run.data.tags["dae.trial_state"] == "diverged"}
    assert result.front and not diverged & {point.trial for point in result.front}
    complete = [run for run in trials if run.data.tags["dae.trial_state"] == "complete"]
    for run in complete:
        assert {"tune/accuracy", "tune/noisy_accuracy"} <= set(run.data.metrics)
        assert "tune/value" not in run.data.metrics
    on_front = {point.trial: point.values for point in result.front}
    for run in complete:
        number = int(run.data.tags["dae.trial"])
        if number in on_front:
            assert on_front[number] == {"accuracy": run.data.metrics["tune/accuracy"],
                                        "noisy-accuracy": run.data.metrics["tune/noisy_accuracy"]}
    parent = client.get_run(first.mlflow_run_id)
    assert parent.data.params["tune.objective"] == "accuracy+noisy-accuracy"
    assert "Front of `adam-noise`" in parent.data.tags["mlflow.note.content"]
    artifacts = {f.path for folder in ("tuning", "figures/tuning") for f in client.list_artifacts(parent.info.run_id,
                                                                                               folder)}
    assert {"tuning/adam-noise-front.md", "figures/tuning/adam-noise-front.png",
            "figures/tuning/adam-noise-slice-noisy-accuracy.png"} <= artifacts

    more = tune(trials=5)
    assert more.cells["adam-noise"].trials == 5
    assert len(client.search_runs([client.get_experiment_by_name(name).experiment_id],
                                  "tags.`dae.role` = 'trial'")) == 5, "the study continues: one more trial"

    point = more.cells["adam-noise"].point("best-noisy-accuracy")
    compared = dae_compare(base=build_config("smoke", {**QUICK, "data": {**QUICK["data"], "validation_size": 0}}),
                           seeds=1, cells=["adam-noise"], data_dir=str(data_root), download=False,
                           experiment_name=name, work_dir=str(tmp_path), tuned_run_id=more.mlflow_run_id,
                           tuned_point="best-noisy-accuracy")
    (child,) = [client.get_run(ref.mlflow_run_id) for ref in compared.runs]
    assert float(child.data.params["pretrain.noise.std"]) == pytest.approx(point.params["pretrain.noise.std"])
    assert float(child.data.params["classifier.lr"]) == pytest.approx(point.params["classifier.lr"])
    assert client.get_run(compared.mlflow_run_id).data.tags["dae.tuned_point"] == "best-noisy-accuracy"
    at_knee = dae_compare(base=build_config("smoke", {**QUICK, "data": {**QUICK["data"], "validation_size": 0}}),
                          seeds=1, cells=["adam-noise"], data_dir=str(data_root), download=False,
                          experiment_name=name, work_dir=str(tmp_path), tuned_run_id=more.mlflow_run_id)
    (child,) = [client.get_run(ref.mlflow_run_id) for ref in at_knee.runs]
    knee = more.cells["adam-noise"].point("knee")
    assert float(child.data.params["classifier.lr"]) == pytest.approx(knee.params["classifier.lr"])
    assert client.get_run(at_knee.mlflow_run_id).data.tags["dae.tuned_point"] == "knee", "a front's default is said"


def test_a_multi_objective_study_keeps_diverged_trials_off_its_front_and_prunes_nothing(tmp_path):
    import optuna

    from adapters.studies import cell_result, open_study

    config = cell_config(build_config("smoke", QUICK), "adam-noise", 0)
    study = open_study("two", f"sqlite:///{tmp_path / 'optuna.db'}", config, ("accuracy", "noisy-accuracy"))
    assert isinstance(study.pruner, optuna.pruners.NopPruner) and len(study.directions) == 2
    distribution = {"classifier.lr": optuna.distributions.FloatDistribution(0.01, 10, log=True)}
    for lr, values, state in ((0.1, [90.0, 70.0], "COMPLETE"), (10.0, None, "PRUNED"), (0.3, [88.0, 80.0], "COMPLETE"),
                              (0.5, [85.0, 75.0], "COMPLETE")):
        study.add_trial(optuna.trial.create_trial(params={"classifier.lr": lr}, distributions=distribution,
                                                  values=values, state=optuna.trial.TrialState[state]))
    result = cell_result("adam-noise", study, ("accuracy", "noisy-accuracy"), trials=4)
    assert [point.trial for point in result.front] == [0, 2] and result.pruned == 1
    assert result.best_params == result.point("knee").params and result.best_value == result.point("knee").values[
        "accuracy"]


def test_a_cell_without_pretraining_is_tuned_on_accuracy_only():
    baseline = cell_config(build_config("smoke"), "no-pretraining", 0)
    assert search_space(baseline, [])[0].key == "classifier.lr"
    assert cell_objectives(baseline, ("mse", "accuracy", "noisy-accuracy")) == ("accuracy", "noisy-accuracy")
    with pytest.raises(ConfigError, match="no reconstruction MSE"):
        cell_objectives(baseline, ("mse",))


def test_one_search_over_every_cell_gives_each_its_optimizers_pretraining_range_and_the_classifiers_rate():
    """Issue 26's search: `--space pretrain.lr=default --space classifier.lr=log:0.01:3` over Adam,
    SGD and no-pretraining cells."""
    given = [parse_dimension("pretrain.lr=default"), parse_dimension("classifier.lr=log:0.01:3")]
    classifier_rate = Dimension("classifier.lr", "log", 0.01, 3.0)
    base = build_config("smoke")
    spaces = {cell: search_space(cell_config(base, cell, 0), given)
              for cell in ("adam-clean-frozen", "sgd-noise", "no-pretraining")}
    assert spaces == {"adam-clean-frozen": (Dimension("pretrain.lr", "log", 1e-4, 0.1), classifier_rate),
                      "sgd-noise": (Dimension("pretrain.lr", "log", 0.1, 1000.0), classifier_rate),
                      "no-pretraining": (classifier_rate,)}, "a rate no cell trains with is not searched"
    assert given[0].spec() == "pretrain.lr=default"
    with pytest.raises(ConfigError, match="only pretrain.lr has a default range"):
        parse_dimension("classifier.lr=default")


def test_each_cell_is_scored_on_its_first_budget_of_trials_and_workers_only_join_studies(tmp_path):
    """Workers sharing a study may finish a trial or two past the budget: the result counts
    the first ``trials`` complete or pruned ones, so every cell gets the same budget. A
    fanned-out worker pointed at a database without the study refuses instead of starting one."""
    import optuna

    from adapters.studies import cell_result, open_study

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    config = cell_config(build_config("smoke", QUICK), "adam-noise", 0)
    study = open_study("shared", storage, config, ("mse",), worker=0)
    distribution = {"pretrain.lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)}
    for lr, value, state in ((0.01, 0.5, "COMPLETE"), (0.02, None, "PRUNED"), (0.03, 0.3, "COMPLETE"),
                             (0.04, None, "FAIL"), (0.05, 0.1, "COMPLETE")):
        study.add_trial(optuna.trial.create_trial(
            params={"pretrain.lr": lr}, distributions=distribution, value=value,
            state=optuna.trial.TrialState[state], intermediate_values={1: 0.9}))
    result = cell_result("adam-noise", study, ("mse",), trials=3)
    assert (result.trials, result.pruned, result.best_params) == (3, 1, {"pretrain.lr": 0.03})
    assert cell_result("adam-noise", study, ("mse",), trials=10).best_value == 0.1
    with pytest.raises(ConfigError, match="DAE_TUNING_STORAGE"):
        open_study("shared", f"sqlite:///{tmp_path / 'elsewhere.db'}", config, ("mse",), worker=1)
    proposed = [open_study("shared", storage, config, ("mse",), worker).ask(distribution).params for worker in (1, 2)]
    assert proposed[0] != proposed[1], "two workers with the same sampler seed would repeat each other's trials"
