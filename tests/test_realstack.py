"""The deployments against real servers: PostgreSQL, `prefect server start`, an MLflow
server with artifacts proxied to an S3-compatible store (moto's server here, RustFS in
docker-compose.yml), `prefect deploy --all` and process workers on the `dae-pool` pool;
both servers ask for credentials as in docker-compose.yml, and every client here uses the
identity its service has there (workers and `dae`: the worker's; this process: the admin's).

Skipped with a reason where PostgreSQL is unreachable, except under CI, which must run it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import torch
from mlflow import MlflowClient

from adapters import mlflow_runs
from tests import stack
from tests.conftest import TINY, make_dataset, write_idx
from tests.gate import Gate, after_epochs

pytestmark = pytest.mark.realstack
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = {**TINY, "pretrain": {**TINY["pretrain"], "epochs": 4, "hidden_units": 32},
          "classifier": {**TINY["classifier"], "epochs": 2}}
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Stack:
    env: dict[str, str]  # a worker's: Prefect's auth string and the worker's MLflow identity
    api: str
    mlflow_uri: str
    root: Path
    credentials: stack.Credentials

    @property
    def headers(self) -> dict[str, str]:
        return self.credentials.prefect_headers()

    def mlflow(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.mlflow_uri, registry_uri=self.mlflow_uri)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "prefect"), *args], env=self.env, cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)

    def create_run(self, deployment: str, parameters: dict) -> str:
        flow, name = deployment.split("/")
        found = httpx.get(f"{self.api}/deployments/name/{flow}/{name}", headers=self.headers)
        created = httpx.post(f"{self.api}/deployments/{found.raise_for_status().json()['id']}/create_flow_run",
                             json={"parameters": parameters}, headers=self.headers)
        assert created.is_success, created.text
        return created.json()["id"]

    def wait(self, flow_run_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = httpx.get(f"{self.api}/flow_runs/{flow_run_id}", headers=self.headers).raise_for_status().json()
            if run["state_type"] in FINAL:
                return run
            time.sleep(1)
        raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout} s")


def _env(root: Path) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DAE_"))}
    return {**inherited, "PATH": f"{BIN}:{inherited.get('PATH', '')}", "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def real_stack(tmp_path_factory):
    if not stack.postgres_reachable():
        reason = f"PostgreSQL is not reachable at {stack.PG_HOST}:{stack.PG_PORT}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the real-stack test (start PostgreSQL first)")
        pytest.skip(reason)
    import boto3

    root = tmp_path_factory.mktemp("stack")
    make_dataset(root / "data")
    base = _env(root)
    s3_port = stack.free_port()
    s3_env = {"AWS_ACCESS_KEY_ID": "stack-test", "AWS_SECRET_ACCESS_KEY": "stack-test-secret",
              "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}"}
    with contextlib.ExitStack() as started:
        started.enter_context(stack.background(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], base, root / "s3.log",
            ready_url=f"http://127.0.0.1:{s3_port}/moto-api/data.json"))
        boto3.client("s3", endpoint_url=s3_env["MLFLOW_S3_ENDPOINT_URL"], aws_access_key_id="stack-test",
                     aws_secret_access_key="stack-test-secret", region_name="us-east-1").create_bucket(Bucket="mlflow")
        credentials = stack.Credentials()
        prefect_api, mlflow_uri = started.enter_context(
            stack.servers(root, base, "s3://mlflow/artifacts", credentials, mlflow_env=s3_env))
        # The mlflow-users service: the admin creates the worker's and the model server's identities.
        users = subprocess.run([str(BIN / stack.USERS[0]), *stack.USERS[1:]], capture_output=True, text=True,
                               env={**base, "MLFLOW_TRACKING_URI": mlflow_uri, **credentials.users_env()},
                               timeout=120)
        assert users.returncode == 0, users.stdout + users.stderr
        # dae-tune's studies, shared by the workers as compose's DAE_TUNING_STORAGE does.
        studies = started.enter_context(stack.fresh_database("dae_optuna"))
        # Clients (deploy, workers, flows) get no S3 keys: artifacts go through the MLflow server.
        env = {**base, "PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": mlflow_uri,
               "DAE_TUNING_STORAGE": f"postgresql+psycopg://postgres@{stack.PG_HOST}:{stack.PG_PORT}/{studies}",
               "DAE_DATA_DIR": str(root / "data"), **credentials.client_env(credentials.worker),
               "DAE_WORK_DIR": str(root / "work"), "PREFECT_WORKER_QUERY_SECONDS": "1"}
        real = Stack(env=env, api=env["PREFECT_API_URL"], mlflow_uri=env["MLFLOW_TRACKING_URI"], root=root,
                     credentials=credentials)
        # This process reads (and checks) as the admin; MLflow's client takes credentials from the environment.
        patched = started.enter_context(pytest.MonkeyPatch.context())
        for name, value in credentials.client_env(credentials.admin).items():
            patched.setenv(name, value)
        for command in (["work-pool", "create", stack.POOL, "--type", "process"], ["--no-prompt", "deploy", "--all"]):
            done = real.cli(*command)
            assert done.returncode == 0, done.stdout + done.stderr
        for name in ("worker-a", "worker-b"):
            started.enter_context(stack.background(stack.worker_command(name), {**env, "DAE_WORKER_NAME": name},
                                                   root / f"{name}.log"))
        yield real


def test_deployment_run_watch_completes_and_is_tracked_on_the_servers(real_stack):
    done = real_stack.cli("deployment", "run", "dae-experiment/lecture", "--params",
                          json.dumps({"config": CONFIG, "download": False, "experiment_name": "stack-lecture"}),
                          "--watch", timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = real_stack.mlflow()
    (run,) = client.search_runs([client.get_experiment_by_name("stack-lecture").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "pretrain/mse")] == [1, 2, 3, 4]
    assert "test/accuracy" in run.data.metrics and run.data.tags["prefect.deployment_name"] == "lecture"
    figures = {f.path for f in client.list_artifacts(run.info.run_id, "figures")}
    assert "figures/encoder_weights_after.png" in figures
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts must be proxied by the server"
    versions = client.search_model_versions(f"run_id='{run.info.run_id}'")
    assert versions and versions[0].name == "dae-mnist-classifier"


def test_retrain_sets_champion_then_decides_by_the_margin(real_stack):
    client = real_stack.mlflow()
    parameters = {"config": CONFIG, "download": False, "experiment_name": "stack-retrain", "margin": 0.1}
    first = real_stack.wait(real_stack.create_run("dae-retrain/nightly", parameters))
    assert first["state_type"] == "COMPLETED"
    champion = client.get_model_version_by_alias("dae-mnist-classifier", "champion")
    second = real_stack.wait(real_stack.create_run("dae-retrain/nightly", parameters))
    assert second["state_type"] == "COMPLETED"
    # Same config and seed: same accuracy, a gain of 0 < 0.1 points, so the new model is challenger.
    challenger = client.get_model_version_by_alias("dae-mnist-classifier", "challenger")
    assert client.get_model_version_by_alias("dae-mnist-classifier", "champion").version == champion.version
    assert int(challenger.version) > int(champion.version)
    decided = client.get_run(challenger.run_id).data.tags
    assert decided["dae.retrain.action"] == "challenger" and "margin" in decided["dae.retrain.reason"]


def test_the_served_champion_answers_like_its_evaluation_on_a_gpu_host(real_stack, tmp_path):
    """`dae serve` on the champion, as the compose service runs it, on a host where
    torch reports CUDA (faked here): the answers' confusion matrix on the test images is the
    one the champion's run logged."""
    from dae_core.data import load_split

    client = real_stack.mlflow()
    parameters = {"config": CONFIG, "download": False, "experiment_name": "stack-serve"}
    assert real_stack.wait(real_stack.create_run("dae-retrain/nightly", parameters))["state_type"] == "COMPLETED"
    champion = client.get_model_version_by_alias("dae-mnist-classifier", "champion")
    fake_gpu = tmp_path / "fake-gpu"
    fake_gpu.mkdir()
    (fake_gpu / "sitecustomize.py").write_text("import torch\ntorch.cuda.is_available = lambda: True\n")
    port = stack.free_port()
    env = {**real_stack.env, **{key: value for key, value in stack.MODEL_SERVER_ENV.items()
                                if key != "MLFLOW_TRACKING_URI"}, "PYTHONPATH": str(fake_gpu),
           **real_stack.credentials.client_env(real_stack.credentials.serving)}
    test = load_split(Path(real_stack.env["DAE_DATA_DIR"]) / "MNIST" / "raw", train=False)
    pixels = test.flat_pixels(torch.float32).numpy()
    with stack.background(stack.model_server_command(port), env, tmp_path / "model-server.log",
                          ready_url=f"http://127.0.0.1:{port}/ping", timeout=240):
        # 1,000 images a request: all 10,000 in one would be ~80 MB, over the 16 MiB limit.
        answers = [httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                              json={"inputs": pixels[start:start + 1000].tolist()})
                   for start in range(0, len(pixels), 1000)]
    assert all(answered.status_code == 200 for answered in answers), answers[0].text
    probabilities = np.concatenate([np.asarray(answered.json()["predictions"]) for answered in answers])
    assert probabilities.shape == (len(test), 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    served = np.zeros((10, 10), int)
    np.add.at(served, (test.labels.numpy(), probabilities.argmax(axis=1)), 1)
    logged = json.loads(Path(client.download_artifacts(champion.run_id, "tables/confusion_matrix.json",
                                                       str(tmp_path))).read_text())
    assert served.tolist() == [row[1:] for row in logged["data"]]


def test_two_retrains_triggered_at_once_never_overlap(real_stack):
    parameters = {"config": CONFIG, "download": False, "experiment_name": "stack-overlap", "margin": 0.1}
    ids = [real_stack.create_run("dae-retrain/nightly", parameters) for _ in range(2)]
    runs = sorted((real_stack.wait(i, timeout=400) for i in ids), key=lambda r: r["start_time"])
    assert [r["state_type"] for r in runs] == ["COMPLETED", "COMPLETED"]
    assert runs[0]["end_time"] <= runs[1]["start_time"], "the concurrency limit let two retrains overlap"


def test_compare_fans_cells_out_over_two_workers(real_stack):
    overrides = [f"--set=data.batch_size={CONFIG['data']['batch_size']}", "--set=data.train_limit=null",
                 "--set=data.test_limit=null", "--set=pretrain.epochs=4", "--set=pretrain.hidden_units=32",
                 "--set=classifier.epochs=2", "--set=runtime.threads=1"]
    done = subprocess.run(
        [str(BIN / "dae"), "compare", "--preset", "smoke", *overrides, "--seeds", "2",
         "--cells", "adam-noise", "no-pretraining", "--fan-out", "dae-experiment/lecture",
         "--experiment", "stack-compare", "--no-download", "--data-dir", real_stack.env["DAE_DATA_DIR"]],
        env=real_stack.env, cwd=real_stack.root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = real_stack.mlflow()
    experiment = client.get_experiment_by_name("stack-compare").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`dae.role` = 'comparison'")
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4 and parent.info.status == "FINISHED"
    assert {c.data.tags["dae.worker"] for c in children} == {"worker-a", "worker-b"}


def test_tune_fans_trials_out_over_two_workers_sharing_a_postgresql_study(real_stack):
    """`dae tune --fan-out`: two deployment runs of dae-tune/optimizers take the trials of
    both studies (of two objectives each) from PostgreSQL, each cell gets exactly its budget,
    and the dispatcher reports each cell's front under one parent run; SQLite storage and an
    unknown deployment are refused."""
    import optuna

    dae = [str(BIN / "dae"), "tune", "--preset", "smoke", "--set=data.train_limit=null", "--set=data.test_limit=null",
           "--set=data.validation_size=40", "--set=pretrain.epochs=4", "--set=pretrain.hidden_units=32",
           "--set=runtime.threads=1", "--trials", "4", "--objective", "accuracy", "noisy-accuracy",
           "--experiment", "stack-tune", "--no-download",
           "--data-dir", real_stack.env["DAE_DATA_DIR"]]
    summary = real_stack.root / "tune.json"
    done = subprocess.run([*dae, "--fan-out", "dae-tune/optimizers", "--parallel", "2", "--summary-json", str(summary)],
                          env=real_stack.env, cwd=real_stack.root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(summary.read_text())
    assert sorted(report["cells"]) == ["adam-noise", "sgd-noise"]
    assert all(cell["trials"] == 4 and cell["front"] for cell in report["cells"].values())
    client = real_stack.mlflow()
    experiment = client.get_experiment_by_name("stack-tune").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`dae.role` = 'tuning'")
    assert parent.info.run_id == report["mlflow_run_id"] and parent.info.status == "FINISHED"
    trials = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(trials) >= 8 and {t.data.tags["dae.worker"] for t in trials} == {"worker-a", "worker-b"}
    assert parent.data.tags["prefect.flow_run_id"] not in {t.data.tags["prefect.flow_run_id"] for t in trials}
    assert {t.data.tags["dae.trial_state"] for t in trials} <= {"complete", "pruned", "diverged"}
    scored = [t.data.tags["dae.cell"] for t in trials if t.data.tags.get("dae.scored") != "false"]
    assert sorted(collections.Counter(scored).values()) == [4, 4], "runs past a cell's budget are tagged unscored"
    storage = real_stack.env["DAE_TUNING_STORAGE"]
    for cell, found in report["cells"].items():
        (name,) = [name for name in optuna.get_all_study_names(storage) if name.startswith(f"dae-{cell}-")]
        counted = [t for t in optuna.load_study(study_name=name, storage=storage).trials
                   if t.state.name in ("COMPLETE", "PRUNED")]
        assert len(counted) >= 4 and found["best_params"] in [t.params for t in counted]
        assert {point["trial"] for point in found["front"]} <= {t.number for t in counted}

    refused = subprocess.run([*dae, "--fan-out", "dae-tune/optimizers", "--storage", "sqlite:///optuna.db"],
                             env=real_stack.env, cwd=real_stack.root, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "cannot share" in refused.stderr and "Traceback" not in refused.stderr
    # The studies are full: the same command trains nothing, dispatches nothing, names the run.
    again = subprocess.run([*dae, "--fan-out", "dae-tune/optimizers", "--parallel", "2"], env=real_stack.env,
                           cwd=real_stack.root, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"already tuned: nothing trained, the studies hold 4 trials per cell from " \
        f"MLflow run {parent.info.run_id}" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    assert len(client.search_runs([experiment], "tags.`dae.role` = 'tuning'")) == 1
    # A fifth trial per cell is work to send: to a deployment that is not there, refused.
    unknown = subprocess.run([*dae, "--trials", "5", "--fan-out", "dae-tune/nowhere"], env=real_stack.env,
                             cwd=real_stack.root, capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "no such deployment" in unknown.stderr, unknown.stderr[-2000:]


def test_a_bad_deployment_parameter_is_refused_by_the_server(real_stack):
    deployment = httpx.get(f"{real_stack.api}/deployments/name/dae-experiment/lecture",
                           headers=real_stack.headers).raise_for_status().json()

    def lecture_runs() -> int:
        counted = httpx.post(f"{real_stack.api}/flow_runs/count", headers=real_stack.headers,
                             json={"deployments": {"id": {"any_": [deployment["id"]]}}})
        return counted.raise_for_status().json()

    before = lecture_runs()
    done = real_stack.cli("deployment", "run", "dae-experiment/lecture", "--params",
                          json.dumps({"config": {"pretrain": {"lr": -1}}}))
    assert done.returncode != 0
    assert "lr" in done.stdout + done.stderr
    assert lecture_runs() == before, "no flow run may be created for refused parameters"


def _experiment_process(env: dict[str, str], config: dict, experiment: str, seed: int,
                        held: tuple[Gate, int] | None = None) -> subprocess.Popen:
    """The experiment flow in a process of its own; ``held=(gate, N)``: held at ``gate`` once
    it has saved N epochs."""
    script = (
        "import json, sys\n"
        "from dae_core.config import ExperimentConfig\n"
        "from flows.experiment import dae_experiment\n"
        "config = ExperimentConfig.model_validate_json(sys.argv[1])\n"
        "dae_experiment(config=config, download=False, experiment_name=sys.argv[2], register_model=False)\n"
    )
    command = [sys.executable, "-c", script, json.dumps({**config, "seed": seed}), experiment]
    if held:
        gate, epochs = held
        command = after_epochs(gate, epochs, *command[1:])
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_eight_runs_at_once_against_the_tracking_server(real_stack):
    small = {**CONFIG, "pretrain": {**CONFIG["pretrain"], "epochs": 2, "hidden_units": 16},
             "classifier": {**CONFIG["classifier"], "epochs": 1}, "runtime": {"device": "cpu", "threads": 1}}
    runs = [_experiment_process(real_stack.env, small, "stack-eight", seed) for seed in range(8)]
    outputs = [(run.wait(timeout=600), run.stdout.read()) for run in runs]
    assert [code for code, _ in outputs] == [0] * 8, "\n".join(out[-2000:] for code, out in outputs if code)
    client = real_stack.mlflow()
    finished = client.search_runs([client.get_experiment_by_name("stack-eight").experiment_id])
    assert len(finished) == 8 and {r.info.status for r in finished} == {"FINISHED"}
    for run in finished:
        assert len(client.get_metric_history(run.info.run_id, "pretrain/mse")) == 2


def _log_dataset_at(start: threading.Barrier, run_id: str) -> None:
    start.wait()
    mlflow_runs.log_dataset(run_id, "mnist", "ab" * 20, "/data/MNIST/raw", {"train": 60})


def test_runs_of_a_new_experiment_logging_its_dataset_at_once_all_record_it(real_stack, track_at):
    """MLflow's server looks the dataset up, then inserts it if missing: two runs at once can
    both insert, and one is refused for a duplicate key (CI saw it once in eight runs)."""
    track_at(real_stack.mlflow_uri)
    client = real_stack.mlflow()
    for attempt in range(6):
        experiment = client.create_experiment(f"stack-dataset-race-{attempt}")
        runs = [client.create_run(experiment).info.run_id for _ in range(8)]
        start = threading.Barrier(len(runs))
        with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
            list(pool.map(functools.partial(_log_dataset_at, start), runs))  # raises what a thread raised
        inputs = [client.get_run(run_id).inputs.dataset_inputs for run_id in runs]
        assert {(i.dataset.name, i.dataset.digest) for logged in inputs for i in logged} == {("mnist", "ab" * 18)}
        assert [len(logged) for logged in inputs] == [1] * len(runs)


def test_a_tracking_server_that_goes_away_mid_run_loses_no_epoch(real_stack, tmp_path):
    """MLflow's client retries with backoff: a server back within seconds misses nothing. The
    run is held after its third epoch while the server is killed, then trains on into the outage."""
    port = stack.free_port()
    command = [*stack.MLFLOW_SERVER, "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri",
               f"sqlite:///{tmp_path / 'outage.db'}", "--serve-artifacts", "--artifacts-destination",
               str(tmp_path / "artifacts"), "--workers", "1"]
    env = {**real_stack.env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    config = {**CONFIG, "pretrain": {**CONFIG["pretrain"], "epochs": 40, "hidden_units": 256},
              "runtime": {"device": "cpu", "threads": 1}}
    gate = Gate(tmp_path / "gate")
    with stack.background(command, real_stack.env, tmp_path / "first.log",
                          ready_url=f"http://127.0.0.1:{port}/health") as server:
        training = _experiment_process(env, config, "stack-outage", 0, held=(gate, 3))
        client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        gate.wait_reached(training, 180, "the run to save its third epoch")
        experiment = client.get_experiment_by_name("stack-outage")
        os.killpg(server.pid, 9)
        server.wait()
    gate.release()
    time.sleep(3)
    with stack.background(command, real_stack.env, tmp_path / "second.log",
                          ready_url=f"http://127.0.0.1:{port}/health"):
        assert training.wait(timeout=400) == 0, training.stdout.read()[-3000:]
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "pretrain/mse")] == list(range(1, 41))


@contextlib.contextmanager
def _webhook_receiver() -> Iterator[tuple[str, list[dict]]]:
    """A local HTTP endpoint that records the JSON bodies posted to it."""
    received: list[dict] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()


def _wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(1)
    return value


def _kill_machine(worker_name: str) -> int:
    """SIGKILL a worker and every process it started, all at once, as when its machine dies."""
    (worker,) = [p for p in psutil.process_iter(["cmdline"])
                 if "worker" in (p.info["cmdline"] or []) and worker_name in (p.info["cmdline"] or [])]
    doomed = [worker, *worker.children(recursive=True)]
    for process in doomed:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(doomed, timeout=10)
    return len(doomed)


def _retrain_runs(real_stack: Stack) -> list[dict]:
    found = httpx.post(f"{real_stack.api}/flow_runs/filter", headers=real_stack.headers,
                       json={"flows": {"name": {"any_": ["dae-retrain"]}}})
    return found.raise_for_status().json()


def test_a_drifting_batch_is_flagged_and_starts_a_retrain_a_clean_one_does_not(real_stack, tmp_path):
    setup = subprocess.run([str(BIN / "dae"), "setup"], env=real_stack.env, cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert setup.returncode == 0 and "automation ready: dae: retrain when a scored batch drifts" in setup.stdout, \
        setup.stdout + setup.stderr
    retrain = {"config": CONFIG, "download": False, "experiment_name": "stack-drift"}
    assert real_stack.wait(real_stack.create_run("dae-retrain/nightly", retrain))["state_type"] == "COMPLETED"
    raw = Path(real_stack.env["DAE_DATA_DIR"]) / "MNIST" / "raw"
    # The training images: enough of them (240) for the distribution checks.
    images = np.fromfile(raw / "train-images-idx3-ubyte", dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    write_idx(tmp_path / "inverted-idx3-ubyte", 255 - images)
    client = real_stack.mlflow()

    def scored(source: Path, labels: Path | None) -> str:
        parameters = {"source": str(source), "labels_file": str(labels) if labels else None}
        flow_run_id = real_stack.create_run("dae-score/batch", parameters)
        assert real_stack.wait(flow_run_id)["state_type"] == "COMPLETED"
        (run,) = client.search_runs([client.get_experiment_by_name("dae-scoring").experiment_id],
                                    f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
        return run.data.tags["dae.monitor.verdict"]

    before = {run["id"] for run in _retrain_runs(real_stack)}
    assert scored(raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte") == "ok"
    time.sleep(10)
    assert {run["id"] for run in _retrain_runs(real_stack)} == before, "a clean batch starts nothing"
    assert scored(tmp_path / "inverted-idx3-ubyte", None) == "drift"
    started = _wait_until(lambda: [r for r in _retrain_runs(real_stack) if r["id"] not in before] or None, 120,
                          "the automation to start dae-retrain")
    # Ended here, so that the module's later retrains do not queue behind it.
    assert real_stack.wait(started[0]["id"], timeout=400)["state_type"] == "COMPLETED"


def test_a_lost_machine_ends_crashed_and_failed_notifies_and_the_next_retrain_completes(real_stack):
    """Runs last: it kills one of the module's workers (a fresh one takes its place)."""
    client = real_stack.mlflow()
    with _webhook_receiver() as (url, received), contextlib.ExitStack() as started:
        setup = subprocess.run([str(BIN / "dae"), "setup", "--zombie-after", "60", "--notify-webhook", url],
                               env=real_stack.env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        assert setup.stdout.count("automation ready") == 4

        # A retrain that fails (no data where it looks) is reported to the webhook.
        broken = {"config": CONFIG, "download": False, "experiment_name": "stack-lost", "data_dir": "/nonexistent"}
        assert real_stack.wait(real_stack.create_run("dae-retrain/nightly", broken))["state_type"] == "FAILED"
        _wait_until(lambda: any("Failed" in message["text"] for message in received), 90, "a failure notification")

        # A long retrain loses its machine mid-training: worker and flow-run process SIGKILLed.
        long = {**CONFIG, "pretrain": {**CONFIG["pretrain"], "epochs": 1000, "hidden_units": 256}}
        doomed = real_stack.create_run("dae-retrain/nightly",
                                       {"config": long, "download": False, "experiment_name": "stack-lost"})
        experiment = _wait_until(lambda: client.get_experiment_by_name("stack-lost"), 120, "the experiment")

        def training_run():
            runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
            return next((r for r in runs if client.get_metric_history(r.info.run_id, "pretrain/mse")), None)

        victim = _wait_until(training_run, 180, "the long retrain training")
        assert _kill_machine(victim.data.tags["dae.worker"]) >= 2
        killed_at = time.monotonic()
        started.enter_context(stack.background(stack.worker_command("worker-fresh"),
                                               {**real_stack.env, "DAE_WORKER_NAME": "worker-fresh"},
                                               real_stack.root / "worker-fresh.log"))

        crashed = real_stack.wait(doomed, timeout=240)
        assert crashed["state_type"] == "CRASHED", crashed["state"]
        crash_seconds = time.monotonic() - killed_at
        ended = _wait_until(lambda: (r := client.get_run(victim.info.run_id)).info.status == "FAILED" and r, 180,
                            "the MLflow run of the crashed flow run to end FAILED")
        assert ended.data.tags["dae.failure"] == "prefect flow run crashed"
        _wait_until(lambda: any("Crashed" in message["text"] for message in received), 90, "a crash notification")

        # The next retrain is not blocked by the dead one (the deployment's concurrency slot).
        after = real_stack.wait(real_stack.create_run("dae-retrain/nightly", {
            "config": CONFIG, "download": False, "experiment_name": "stack-lost"}), timeout=400)
        assert after["state_type"] == "COMPLETED", after["state"]
        print(f"crashed {crash_seconds:.0f} s after the kill")


def _mlflow_api(real_stack: Stack, method: str, path: str, login: tuple[str, str] | None, **kwargs) -> int:
    """The HTTP status of one MLflow REST call as ``login`` (None: anonymous)."""
    return httpx.request(method, f"{real_stack.mlflow_uri}/api/2.0/mlflow/{path}", auth=login, timeout=30,
                         **kwargs).status_code


def test_nobody_gets_into_either_server_without_credentials(real_stack):
    credentials = real_stack.credentials
    wrong_password = (credentials.worker[0], "not-the-password-at-all")
    for login, expected in ((None, 401), (wrong_password, 401), (credentials.worker, 200)):
        assert _mlflow_api(real_stack, "GET", "experiments/search?max_results=1", login) == expected, login
    assert httpx.get(f"{real_stack.mlflow_uri}/", timeout=30).status_code == 401, "the MLflow UI asks for a login"
    for headers, expected in (({}, 401), (stack.Credentials().prefect_headers(), 401), (real_stack.headers, 200)):
        assert httpx.post(f"{real_stack.api}/flows/filter", json={}, headers=headers).status_code == expected
    # Health checks (compose's, `dae`'s own) stay open.
    assert httpx.get(f"{real_stack.mlflow_uri}/health").status_code == 200
    assert httpx.get(f"{real_stack.api}/health").status_code == 200


def test_dae_without_credentials_says_which_one_is_missing(real_stack):
    command = [str(BIN / "dae"), "run", "--preset", "smoke", "--no-download",
               "--data-dir", real_stack.env["DAE_DATA_DIR"]]
    for missing in ("PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_PASSWORD"):
        env = {key: value for key, value in real_stack.env.items() if key != missing}
        done = subprocess.run(command, env=env, cwd=real_stack.root, capture_output=True, text=True, timeout=120)
        assert done.returncode == 4, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and missing in done.stderr.splitlines()[-1], done.stderr


def test_each_identity_changes_the_registry_only_as_its_role_allows(real_stack):
    """The worker registers versions and, as MLflow 3.17 ties moving an alias to the same
    right (docs/deployment.md, "Security"), moves @champion; it deletes nothing. The model
    server's identity only reads; anonymous callers get nothing."""
    parameters = {"config": CONFIG, "download": False, "experiment_name": "stack-identities"}
    assert real_stack.wait(real_stack.create_run("dae-experiment/lecture", parameters))["state_type"] == "COMPLETED"
    client = real_stack.mlflow()
    (run,) = client.search_runs([client.get_experiment_by_name("stack-identities").experiment_id])
    version = client.search_model_versions(f"run_id='{run.info.run_id}'")[0].version
    credentials, model = real_stack.credentials, "dae-mnist-classifier"
    move_champion = {"json": {"name": model, "alias": "champion", "version": version}}
    for login, expected in ((None, 401), (credentials.serving, 403), (credentials.worker, 200)):
        assert _mlflow_api(real_stack, "POST", "registered-models/alias", login, **move_champion) == expected, login
    read_champion = f"registered-models/alias?name={model}&alias=champion"
    assert _mlflow_api(real_stack, "GET", read_champion, credentials.serving) == 200
    for path, body in (("registered-models/alias", {"name": model, "alias": "champion"}),
                       ("model-versions/delete", {"name": model, "version": version}),
                       ("registered-models/delete", {"name": model})):
        assert _mlflow_api(real_stack, "DELETE", path, credentials.worker, json=body) == 403, path
    assert client.get_model_version_by_alias(model, "champion").version == version


def test_dae_champion_moves_it_only_for_an_identity_that_may(real_stack):
    """`dae champion --set`: refused in two lines to the model server's read-only identity,
    done and recorded for the worker's."""
    # Two more seeds, models that answer differently: the second is registered after a champion
    # exists (the first, on a fresh stack), so it is not champion before the move.
    for seed in (11, 12):
        parameters = {"config": {**CONFIG, "seed": seed}, "download": False, "experiment_name": f"stack-champion{seed}"}
        assert real_stack.wait(real_stack.create_run("dae-experiment/lecture", parameters))["state_type"] == \
            "COMPLETED"
    client = real_stack.mlflow()
    (run,) = client.search_runs([client.get_experiment_by_name("stack-champion12").experiment_id])
    version = str(client.search_model_versions(f"run_id='{run.info.run_id}'")[0].version)
    before = str(client.get_model_version_by_alias("dae-mnist-classifier", "champion").version)
    command = [str(BIN / "dae"), "champion", "--set", version, "--reason", "manual promotion on the stack"]
    credentials = real_stack.credentials
    refused = subprocess.run(command, env={**real_stack.env, **credentials.client_env(credentials.serving)},
                             cwd=real_stack.root, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 4, refused.stderr[-2000:]
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 2 and "refused to move @champion" in lines[0] and "EDIT" in lines[1], refused.stderr
    moved = subprocess.run(command, env={**real_stack.env, **credentials.client_env(credentials.worker)},
                           cwd=real_stack.root, capture_output=True, text=True, timeout=120)
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert str(client.get_model_version_by_alias("dae-mnist-classifier", "champion").version) == version
    listed = subprocess.run([str(BIN / "dae"), "champion"], env=real_stack.env, cwd=real_stack.root,
                            capture_output=True, text=True, timeout=120)
    assert listed.stdout.splitlines()[-1].endswith(
        f"-> {version:<3}  by {credentials.worker[0]}: manual promotion on the stack"), listed.stdout

    # The next `dae predict` (the model server's read-only identity suffices) uses the version named.
    images = str(Path(real_stack.env["DAE_DATA_DIR"]) / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    reader = {**real_stack.env, **credentials.client_env(credentials.serving)}

    def predicted(*model: str) -> list:
        done = subprocess.run([str(BIN / "dae"), "predict", "--json", images, *model], env=reader,
                              cwd=real_stack.root, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return [row["probabilities"] for row in json.loads(done.stdout)]

    assert predicted() == predicted("--model", f"models:/dae-mnist-classifier/{version}")
    assert predicted() != predicted("--model", f"models:/dae-mnist-classifier/{before}")


def test_a_password_rotated_with_dae_users_replaces_the_old_one(real_stack):
    credentials = real_stack.credentials
    rotated = dataclasses.replace(credentials, serving=(credentials.serving[0], "a-brand-new-serving-password"))
    try:
        for current in (rotated, credentials):
            done = subprocess.run([str(BIN / "dae"), "users"], capture_output=True, text=True, timeout=120,
                                  env={**_env(real_stack.root), "MLFLOW_TRACKING_URI": real_stack.mlflow_uri,
                                       **current.users_env()})
            assert done.returncode == 0, done.stdout + done.stderr
            assert "dae-serving: password set; READ" in done.stdout
            assert not {*current.secrets().values()} & {*done.stdout.split(), *done.stderr.split()}
            stale = credentials if current is rotated else rotated
            assert _mlflow_api(real_stack, "GET", "experiments/search?max_results=1", current.serving) == 200
            assert _mlflow_api(real_stack, "GET", "experiments/search?max_results=1", stale.serving) == 401
    finally:
        subprocess.run([str(BIN / "dae"), "users"], capture_output=True, timeout=120,
                       env={**_env(real_stack.root), "MLFLOW_TRACKING_URI": real_stack.mlflow_uri,
                            **credentials.users_env()})


def test_no_secret_reaches_runs_parameters_or_logs(real_stack):
    """After a deployed run: no configured secret in any MLflow run's params and tags or its
    text artifacts, in any Prefect flow run's parameters or logs, or in the workers' output."""
    parameters = {"config": CONFIG, "download": False, "experiment_name": "stack-secrets"}
    assert real_stack.wait(real_stack.create_run("dae-experiment/lecture", parameters))["state_type"] == "COMPLETED"
    client = real_stack.mlflow()
    seen: list[str] = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            seen += [*run.data.params.values(), *run.data.tags.values(), *run.data.params, *run.data.tags]
    (run,) = client.search_runs([client.get_experiment_by_name("stack-secrets").experiment_id])
    for artifact in client.list_artifacts(run.info.run_id):
        if not artifact.is_dir and artifact.path.endswith((".json", ".md", ".txt", ".yaml")):
            seen.append(Path(client.download_artifacts(run.info.run_id, artifact.path)).read_text())
    flow_runs = httpx.post(f"{real_stack.api}/flow_runs/filter", json={"limit": 200}, headers=real_stack.headers)
    seen += [json.dumps(flow_run["parameters"]) for flow_run in flow_runs.raise_for_status().json()]
    logs = httpx.post(f"{real_stack.api}/logs/filter", json={"limit": 200}, headers=real_stack.headers)
    seen += [entry["message"] for entry in logs.raise_for_status().json()]
    seen += [path.read_text() for path in real_stack.root.glob("worker-*.log")]
    assert len(seen) > 50, "nothing to scan: the run left no trace"
    for name, secret in real_stack.credentials.secrets().items():
        assert not any(secret in text for text in seen), f"{name} leaked"
