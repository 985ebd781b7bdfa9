"""The team stack as a team starts it: the README's "Team setup" commands, word for word, on
Docker Engine from a clean checkout, then checked from the host through the published ports
with the credentials of .env. Third-party images are stand-ins built from Debian's packages
(tests/compose_stack.py); the worker image is the repository's Dockerfile, built by compose.

The tests run in order on one stack (module scope): what the image carries, health and
links, refusals, the deployments, serving, faults, and last `down` then `up`."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from mlflow import MlflowClient

from tests import compose_stack, stack_records
from tests.compose_stack import Progress, TeamStack
from tests.conftest import make_dataset
from tests.stack_records import CONFIG

pytestmark = pytest.mark.compose
# Long enough (about a minute on 2 cores) for servers to be restarted while it trains.
LONG_EPOCHS = 1000
LONG = {**CONFIG, "pretrain": {**CONFIG["pretrain"], "epochs": LONG_EPOCHS, "hidden_units": 512},
        "classifier": {**CONFIG["classifier"], "epochs": 1, "lr": 0.1}, "runtime": {"device": "cpu", "threads": 1}}
SERVICES_WITH_HEALTH = ("postgres", "prefect-server", "s3", "mlflow")
ONE_SHOT = ("databases", "create-bucket", "mlflow-users")


@pytest.fixture(scope="module")
def team_stack(tmp_path_factory, request):
    compose_stack.skip_or_fail_without_tools()
    root = tmp_path_factory.mktemp("compose")
    say = Progress(request.config)
    with compose_stack.docker_engine(root / "dockerd.log", say):
        images = compose_stack.fixture_images(say)
        checkout = compose_stack.clean_checkout(root / "checkout")
        make_dataset(root / "data")
        settings = compose_stack.team_settings(images)
        env = compose_stack.team_env(root, settings, f"dae-compose-test-{uuid.uuid4().hex[:6]}", root / "data")
        team = TeamStack(root=checkout, env=env, settings=settings, say=say)
        try:
            team.run_readme(checkout / "README.md")
            yield team
        finally:
            team.keep_logs_and_remove(root / "stack.log")


@pytest.fixture(scope="module")
def mlflow(team_stack) -> MlflowClient:
    """This process reads (and checks) as the admin."""
    with compose_stack.admin_client(team_stack) as client:
        yield client


def test_a_plain_pip_install_carries_every_runtime_import(team_stack):
    """The worker image is `pip install .` without extras: every module of the package and what
    the stack's commands load by name import there (Flask-WTF for `dae users`, psycopg for
    the studies' database, the scoring server)."""
    with open(compose_stack.REPO / "tests" / "runtime_imports.py") as script:
        done = compose_stack.run(["docker", "run", "--rm", "-i", "--entrypoint", "python", compose_stack.worker_image(),
                                  "-"], stdin=script, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_service_is_up_and_printed_links_open_from_the_host(team_stack):
    states = team_stack.health()
    assert {name: states[name] for name in SERVICES_WITH_HEALTH} == dict.fromkeys(SERVICES_WITH_HEALTH, "healthy")
    assert states["worker"] == "running"
    for one_shot in ONE_SHOT:
        inspected = json.loads(compose_stack.run(["docker", "inspect", team_stack.container(one_shot)]).stdout)[0]
        assert inspected["State"]["ExitCode"] == 0, one_shot
    # `prefect deploy` in the worker prints links a person opens on the host, not container names.
    assert f"http://127.0.0.1:{team_stack.settings['PREFECT_PORT']}/deployments" in team_stack.setup_output
    assert "prefect-server:4200" not in team_stack.setup_output
    # `dae setup`: the lost-machine automations and retraining on drift (no webhook in .env: no failure notices).
    assert team_stack.setup_output.count("automation ready") == 3, team_stack.setup_output[-3000:]


def test_nobody_gets_in_without_credentials(team_stack):
    for auth in (None, "wrong-auth-string"):
        assert team_stack.prefect("GET", "/deployments/name/dae-experiment/lecture", auth=auth).status_code == 401
    assert team_stack.prefect("GET", "/deployments/name/dae-experiment/lecture").status_code == 200
    mlflow = team_stack.url("MLFLOW_PORT")
    for login in (None, ("admin", "wrong-password")):
        for path in ("/api/2.0/mlflow/experiments/search?max_results=1", "/"):
            assert httpx.get(f"{mlflow}{path}", auth=login, timeout=30).status_code == 401, (path, login)
    admin = ("admin", team_stack.settings["MLFLOW_ADMIN_PASSWORD"])
    assert httpx.get(f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=1", auth=admin).status_code == 200


def test_the_deployments_complete_and_are_tracked(team_stack, mlflow):
    lecture = team_stack.start_deployment("dae-experiment/lecture",
                          {"config": CONFIG, "download": False, "experiment_name": "compose-lecture"})
    assert team_stack.finished(lecture, "dae-experiment/lecture")["state_type"] == "COMPLETED"
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("compose-lecture").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["prefect.deployment_name"] == "lecture"
    assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "pretrain/mse")] == [1, 2, 3, 4]
    assert "test/accuracy" in run.data.metrics
    assert "figures/encoder_weights_after.png" in {f.path for f in mlflow.list_artifacts(run.info.run_id, "figures")}

    retrain = team_stack.start_deployment("dae-retrain/nightly",
                          {"config": CONFIG, "download": False, "experiment_name": "compose-retrain"})
    assert team_stack.finished(retrain, "dae-retrain/nightly")["state_type"] == "COMPLETED"
    champion = mlflow.get_model_version_by_alias("dae-mnist-classifier", "champion")
    assert mlflow.get_run(champion.run_id).info.status == "FINISHED"

    score = team_stack.start_deployment("dae-score/batch", {"source": "/data/MNIST/raw/t10k-images-idx3-ubyte",
                                                        "labels_file": "/data/MNIST/raw/t10k-labels-idx1-ubyte"})
    assert team_stack.finished(score, "dae-score/batch")["state_type"] == "COMPLETED"
    (scoring,) = mlflow.search_runs([mlflow.get_experiment_by_name("dae-scoring").experiment_id])
    assert scoring.info.status == "FINISHED" and scoring.data.metrics["score/images"] == 80
    assert scoring.data.tags["dae.model_version"] == champion.version

    tuned = {**CONFIG, "data": {**CONFIG["data"], "validation_size": 40}}
    tune = team_stack.start_deployment("dae-tune/optimizers",
                       {"base": tuned, "trials": 1, "download": False, "experiment_name": "compose-tune"})
    assert team_stack.finished(tune, "dae-tune/optimizers")["state_type"] == "COMPLETED"
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("compose-tune").experiment_id])
    trials = [r for r in runs if r.data.tags.get("dae.role") == "trial"]
    assert len(trials) == 2 and {r.info.status for r in runs} == {"FINISHED"}


def _readme_curl(port: str) -> list[str]:
    """The README's request to the model server, on this stack's port."""
    text = (compose_stack.REPO / "README.md").read_text()
    block = text[text.index("curl -s http://127.0.0.1:5001/invocations"):].split("\n#", 1)[0]
    return ["sh", "-c", block.replace("127.0.0.1:5001", f"127.0.0.1:{port}")]


def test_the_model_server_answers_the_readme_request(team_stack):
    # After a promotion the README says: restart the model server (it loads the champion at start).
    team_stack.compose("restart", "model-server")
    team_stack.wait_until(lambda: team_stack.health().get("model-server") == "healthy", 300,
                          "the model server to be healthy")
    done = compose_stack.run(_readme_curl(team_stack.settings["MODEL_PORT"]))
    (probabilities,) = json.loads(done.stdout)["predictions"]
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-4


def _training_run(mlflow: MlflowClient, experiment: str, epochs_done: int):
    """The experiment's RUNNING run once it has logged ``epochs_done`` epochs, else None."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return None
    for run in mlflow.search_runs([found.experiment_id], "attributes.status = 'RUNNING'"):
        if _epochs(mlflow, run) >= epochs_done:
            return run
    return None


def _epochs(mlflow: MlflowClient, run) -> int:
    return len(mlflow.get_metric_history(run.info.run_id, "pretrain/mse"))


def _completed_with_every_epoch(team: TeamStack, mlflow: MlflowClient, flow_run_id: str, experiment: str) -> None:
    """The run completed, or ended Crashed/Failed and its rerun resumed to completion; either
    way one MLflow run holds every epoch once and no run stays RUNNING."""
    state = team.finished(flow_run_id, f"the {experiment} run to end")["state_type"]
    if state != "COMPLETED":
        team.say(f"{experiment}: the run ended {state}; running it again (it resumes)")
        _rerun_completes(team, experiment)
    _every_epoch_once(team, mlflow, experiment)


def _rerun_completes(team: TeamStack, experiment: str) -> None:
    rerun = team.start_deployment("dae-experiment/lecture", {"config": LONG, "download": False,
                                                          "experiment_name": experiment})
    assert team.finished(rerun, f"the {experiment} rerun")["state_type"] == "COMPLETED"


def _every_epoch_once(team: TeamStack, mlflow: MlflowClient, experiment: str) -> None:
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    team.wait_until(lambda: not mlflow.search_runs([experiment_id], "attributes.status = 'RUNNING'"), 300,
               f"no {experiment} MLflow run left RUNNING")
    (finished,) = mlflow.search_runs([experiment_id], "attributes.status = 'FINISHED'")
    steps = [m.step for m in mlflow.get_metric_history(finished.info.run_id, "pretrain/mse")]
    assert steps == list(range(1, LONG_EPOCHS + 1)), steps


def _long_run_training(team: TeamStack, mlflow: MlflowClient, experiment: str, epochs: int) -> tuple[str, object]:
    """A long run started on the stack, once it has trained ``epochs`` epochs: its flow run id
    and its MLflow run."""
    flow_run = team.start_deployment("dae-experiment/lecture",
                           {"config": LONG, "download": False, "experiment_name": experiment})
    training = team.wait_until(lambda: _training_run(mlflow, experiment, epochs), 300,
                               f"the long run to train {epochs} epochs")
    return flow_run, training


def _outage_mid_run(team: TeamStack, flow_run: str, service: str) -> None:
    """``service`` stopped while the worker is frozen mid-run (docker pause), the worker
    thawed to train on into the outage, then the service started again: the outage falls
    mid-run however fast or slow the machine."""
    with team.paused("worker"):
        assert team.flow_run(flow_run)["state_type"] not in compose_stack.FINAL, \
            f"the run must be mid-run when {service} stops"
        team.say(f"docker compose stop {service} (the worker frozen mid-run)")
        team.compose("stop", service)
    time.sleep(5)  # the run trains on against a stack without the service
    team.say(f"docker compose start {service}")
    team.compose("start", service)


def test_restarting_postgres_and_mlflow_mid_run_loses_no_epoch(team_stack, mlflow):
    flow_run, training = _long_run_training(team_stack, mlflow, "compose-restarts", 3)
    _outage_mid_run(team_stack, flow_run, "postgres")
    trained = _epochs(mlflow, training)
    team_stack.wait_until(lambda: _training_run(mlflow, "compose-restarts", trained + 20), 300,
                          "twenty more epochs after the restart")
    _outage_mid_run(team_stack, flow_run, "mlflow")
    _completed_with_every_epoch(team_stack, mlflow, flow_run, "compose-restarts")


def test_a_killed_worker_container_ends_its_run_and_the_rerun_resumes(team_stack, mlflow):
    flow_run, victim = _long_run_training(team_stack, mlflow, "compose-killed", 5)
    worker = team_stack.container("worker")
    # Frozen first, so that the kill falls mid-run whatever the machine's pace.
    compose_stack.run(["docker", "pause", worker])
    assert team_stack.flow_run(flow_run)["state_type"] not in compose_stack.FINAL, "the run must be mid-run when killed"
    team_stack.say("docker kill of the worker container (frozen mid-run)")
    compose_stack.run(["docker", "kill", worker])
    team_stack.compose("up", "-d", "worker")
    # `dae setup`'s automations mark it Crashed once its heartbeats stop, then end its MLflow run.
    assert team_stack.finished(flow_run, "the killed run to be marked Crashed")["state_type"] == "CRASHED"
    ended = team_stack.wait_until(lambda: (r := mlflow.get_run(victim.info.run_id)).info.status == "FAILED" and r, 300,
                                  "the killed run's MLflow run to end FAILED")
    assert ended.data.tags.get("dae.failure") == "prefect flow run crashed", ended.data.tags
    _rerun_completes(team_stack, "compose-killed")
    _every_epoch_once(team_stack, mlflow, "compose-killed")
    (resumed,) = mlflow.search_runs([victim.info.experiment_id], "attributes.status = 'FINISHED'")
    assert resumed.data.tags["dae.resumed_from"] == victim.info.run_id


def _make(team: TeamStack, *args: str, check: bool = True):
    return compose_stack.run(["make", "-s", *args], cwd=team.root, env=team.env, timeout=1800, check=check)


def test_a_backup_made_mid_run_restores_onto_an_empty_stack_record_by_record(team_stack, mlflow, tmp_path):
    """`make backup` while a run trains, `down --volumes`, `make restore`: every record as it
    was (the stack holds a lecture run, a retrain, a scoring, a tuning, the runs the restarts
    and the killed worker left), the run in progress ended as such, and the stack at work."""
    # The nightly retrain paused (and so restored): a night falling mid-test adds no records.
    nightly = team_stack.prefect("GET", "/deployments/name/dae-retrain/nightly").raise_for_status().json()
    team_stack.prefect("PATCH", f"/deployments/{nightly['id']}", json={"paused": True}).raise_for_status()
    endless = {**LONG, "pretrain": {**LONG["pretrain"], "epochs": 1000, "hidden_units": 2048}}  # minutes
    flow_run = team_stack.start_deployment("dae-experiment/lecture", {"config": endless, "download": False,
                                                                      "experiment_name": "compose-backup"})
    training = team_stack.wait_until(lambda: _training_run(mlflow, "compose-backup", 3), 300,
                                     "the endless run to train 3 epochs")
    before = stack_records.read_records(team_stack, mlflow)
    backups = tmp_path / "backups"
    made = _make(team_stack, "backup", f"BACKUP_DIR={backups}")
    team_stack.say(made.stdout.strip().splitlines()[-1])
    (archive,) = backups.glob("dae-backup-*.tar")
    epochs_at_backup = _epochs(mlflow, training)
    assert team_stack.flow_run(flow_run)["state_type"] == "RUNNING", "the backup must be made mid-run"

    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    refused = _make(team_stack, "restore", f"ARCHIVE={truncated}", check=False)
    assert refused.returncode != 0 and "not a complete dae stack backup" in refused.stderr
    refused = _make(team_stack, "restore", f"ARCHIVE={archive}", check=False)
    assert refused.returncode != 0 and "this stack is not empty" in refused.stderr
    assert team_stack.flow_run(flow_run)["state_type"] == "RUNNING", "a refused restore touches nothing"

    team_stack.say("docker compose down --volumes, then make restore")
    team_stack.compose("down", "--volumes", "--timeout", "20")
    restored = _make(team_stack, "restore", f"ARCHIVE={archive}")
    team_stack.say(restored.stdout.strip().splitlines()[-1])
    team_stack.healthy(SERVICES_WITH_HEALTH, "the restored stack's servers to be healthy")
    after = stack_records.read_records(team_stack, mlflow)

    interrupted = training.info.run_id
    ended = after.mlflow["runs"].pop(interrupted)
    was = before.mlflow["runs"].pop(interrupted)
    assert ended["info"][2] == "FAILED" and ended["tags"]["dae.failure"] == "in progress at backup", ended["tags"]
    assert len(ended["metrics"]["pretrain/mse"]) >= len(was["metrics"]["pretrain/mse"])
    assert ended["metrics"]["pretrain/mse"][:len(was["metrics"]["pretrain/mse"])] == was["metrics"]["pretrain/mse"]
    assert len(ended["metrics"]["pretrain/mse"]) <= epochs_at_backup
    assert after.mlflow == before.mlflow
    assert after.figure == before.figure and after.figure.startswith(b"\x89PNG")
    assert (after.users, after.studies) == (before.users, before.studies)
    # The interrupted flow run ends Crashed: by the restore, or first by the lost-machine
    # automation, whose waiting for its heartbeat was restored with the rest; the MLflow run's
    # end then falls to the reconcile deployment, whose run (after the restore) finds it ended.
    flow_runs = after.prefect.pop("flow_runs")
    assert flow_runs.pop(flow_run)[2] == "CRASHED"
    new = {flow_run_id: flow_runs.pop(flow_run_id) for flow_run_id in set(flow_runs) - set(before.prefect["flow_runs"])}
    assert all(name == "reconcile-mlflow-runs" for name, *_ in new.values()), new
    assert flow_runs == before.prefect.pop("flow_runs")
    assert after.prefect == before.prefect

    lecture = team_stack.start_deployment("dae-experiment/lecture", {"config": CONFIG, "download": False,
                                                                     "experiment_name": "compose-restored"})
    assert team_stack.finished(lecture, "a run on the restored stack")["state_type"] == "COMPLETED"


def test_down_then_up_keeps_runs_versions_and_the_champion(team_stack, mlflow):
    def registry() -> tuple:
        experiments = sorted(e.name for e in mlflow.search_experiments())
        runs = sorted((r.info.run_id, r.info.status) for r in mlflow.search_runs(
            [e.experiment_id for e in mlflow.search_experiments()], max_results=1000))
        versions = sorted(v.version for v in mlflow.search_model_versions("name='dae-mnist-classifier'"))
        champion = mlflow.get_model_version_by_alias("dae-mnist-classifier", "champion").version
        return experiments, runs, versions, champion

    before = registry()
    deployments = team_stack.prefect("POST", "/deployments/filter", json={}).raise_for_status().json()
    team_stack.say("docker compose down, then up -d")
    team_stack.compose("down", "--timeout", "20")
    started = time.monotonic()
    team_stack.compose("up", "-d")
    team_stack.wait_until(lambda: all(team_stack.health().get(name) == "healthy" for name in SERVICES_WITH_HEALTH), 300,
               "the servers to be healthy again")
    team_stack.say(f"healthy {time.monotonic() - started:.0f} s after up -d")
    assert registry() == before
    after = team_stack.prefect("POST", "/deployments/filter", json={}).raise_for_status().json()
    assert sorted(d["name"] for d in after) == sorted(d["name"] for d in deployments)
