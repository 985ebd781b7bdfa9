"""Records of every kind a team's stack holds, made through the stack as a team makes them,
and read back whole: for the upgrade and the backup-and-restore tests, which compare what a
stack holds before and after, record by record.

What is read back: every MLflow experiment, run (its params, tags, status, times, every
metric's whole history, its artifacts' paths and sizes), registered model (tags, aliases:
the champion's history is registered-model tags) and version; the MLflow users and their
grants; every Prefect deployment with its schedules, flow run in a final state, automation
and work pool; every Optuna study with its trials."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import httpx
from mlflow import MlflowClient

from tests.compose_stack import FINAL, TeamStack
from tests.conftest import TINY

MODEL = "dae-mnist-classifier"
# Small enough to train in seconds on tiny data.
CONFIG = {**TINY, "pretrain": {**TINY["pretrain"], "epochs": 4, "hidden_units": 32},
          "classifier": {**TINY["classifier"], "epochs": 2}}
USERS = ("admin", "dae-worker", "dae-serving")
FIGURE = "figures/encoder_weights_after.png"
STUDIES = """
import json, os, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = os.environ["DAE_TUNING_STORAGE"]
print(json.dumps({s.study_name: [[t.number, t.state.name, t.values, t.params]
                                 for t in optuna.load_study(study_name=s.study_name, storage=storage).trials]
                  for s in optuna.get_all_study_summaries(storage)}, sort_keys=True))
"""


def make_records(team: TeamStack, mlflow: MlflowClient, prefix: str) -> dict[str, str]:
    """A lecture run (registered, crowned: the first version), a retrain (its decision), a
    scoring batch, a tuning of one trial per cell, and @champion moved by hand to the other
    version (as a person does in MLflow's UI); returns what each flow run's id is."""
    runs = {}
    for name, deployment, parameters in (
            ("lecture", "dae-experiment/lecture", {"config": CONFIG, "download": False,
                                                   "experiment_name": f"{prefix}-lecture"}),
            ("retrain", "dae-retrain/nightly", {"config": CONFIG, "download": False,
                                                "experiment_name": f"{prefix}-retrain"}),
            ("score", "dae-score/batch", {"source": "/data/MNIST/raw/t10k-images-idx3-ubyte",
                                          "labels_file": "/data/MNIST/raw/t10k-labels-idx1-ubyte"}),
            ("tune", "dae-tune/optimizers", {"base": {**CONFIG, "data": {**CONFIG["data"], "validation_size": 40}},
                                             "trials": 1, "download": False, "experiment_name": f"{prefix}-tune"})):
        runs[name] = team.start_deployment(deployment, parameters)
        assert team.finished(runs[name], deployment)["state_type"] == "COMPLETED", name
    champion = mlflow.get_model_version_by_alias(MODEL, "champion").version
    other = next(v.version for v in mlflow.search_model_versions(f"name='{MODEL}'") if v.version != champion)
    mlflow.set_registered_model_alias(MODEL, "champion", other)
    return runs


@dataclass
class Records:
    """What a stack holds, comparable with ==; ``figure`` a logged PNG's bytes."""

    mlflow: dict = field(default_factory=dict)
    users: dict = field(default_factory=dict)
    prefect: dict = field(default_factory=dict)
    studies: dict = field(default_factory=dict)
    figure: bytes = b""


def _mlflow_records(team: TeamStack, mlflow: MlflowClient) -> tuple[dict, bytes]:
    experiments = mlflow.search_experiments(view_type=3)  # active and deleted
    records = {"experiments": {e.experiment_id: [e.name, e.lifecycle_stage, dict(e.tags)] for e in experiments}}
    runs = mlflow.search_runs([e.experiment_id for e in experiments], run_view_type=3, max_results=5000)
    records["runs"] = {}
    figure = b""
    for run in runs:
        artifacts, folders = [], [None]
        while folders:
            for listed in mlflow.list_artifacts(run.info.run_id, folders.pop()):
                (folders.append(listed.path) if listed.is_dir else artifacts.append((listed.path, listed.file_size)))
        histories = {key: [(m.step, m.value, m.timestamp) for m in mlflow.get_metric_history(run.info.run_id, key)]
                     for key in run.data.metrics}
        records["runs"][run.info.run_id] = {
            "info": [run.info.experiment_id, run.info.run_name, run.info.status, run.info.start_time,
                     run.info.end_time, run.info.lifecycle_stage],
            "params": dict(run.data.params), "tags": dict(run.data.tags), "metrics": histories,
            "artifacts": sorted(artifacts)}
        if not figure and any(path == FIGURE for path, _ in artifacts):
            figure = _download(team, run.info.artifact_uri, FIGURE)
    records["models"] = {m.name: [dict(m.tags), dict(m.aliases), m.description]
                         for m in mlflow.search_registered_models()}
    records["versions"] = {(v.name, v.version): [v.run_id, v.source, v.status, dict(v.tags), v.description]
                           for v in mlflow.search_model_versions(f"name='{MODEL}'")}
    return records, figure


def _download(team: TeamStack, artifact_uri: str, path: str) -> bytes:
    """An artifact's bytes through the MLflow server's artifact proxy, as the UI fetches them
    (MLflow's client would take presigned URLs that name the store inside the stack)."""
    location = artifact_uri.removeprefix("mlflow-artifacts:/").strip("/")
    answer = httpx.get(f"{team.url('MLFLOW_PORT')}/api/2.0/mlflow-artifacts/artifacts/{location}/{path}",
                       auth=("admin", team.settings["MLFLOW_ADMIN_PASSWORD"]), timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.content


def _users(team: TeamStack) -> dict:
    """Each of the stack's MLflow users and every grant they hold (on experiments: their
    creator manages them; on the registered model)."""
    users = {}
    for name in USERS:
        answer = httpx.get(f"{team.url('MLFLOW_PORT')}/api/3.0/mlflow/users/permissions/list",
                           params={"username": name}, auth=("admin", team.settings["MLFLOW_ADMIN_PASSWORD"]),
                           timeout=30)
        assert answer.status_code == 200, answer.text
        users[name] = {"is_admin": answer.json()["is_admin"],
                       "grants": sorted(json.dumps(grant, sort_keys=True) for grant in answer.json()["permissions"])}
    return users


def _prefect_records(team: TeamStack) -> dict:
    def listed(path: str, body: dict | None = None) -> list[dict]:
        return team.prefect("POST", path, json=body or {}).raise_for_status().json()

    deployments = {d["name"]: {"flow_id": d["flow_id"], "paused": d["paused"], "work_pool": d["work_pool_name"],
                               "parameters": d["parameters"],
                               "schedules": sorted(json.dumps([s["schedule"], s["active"]], sort_keys=True)
                                                   for s in d["schedules"])}
                   for d in listed("/deployments/filter")}
    finished = listed("/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": sorted(FINAL)}}}, "limit": 200})
    flow_runs = {r["id"]: [r["name"], r["deployment_id"], r["state_type"], r["state_name"], r["parameters"],
                           r["start_time"], r["end_time"]] for r in finished}
    automations = sorted([a["name"], a["enabled"]] for a in listed("/automations/filter"))
    pools = sorted(p["name"] for p in listed("/work_pools/filter"))
    return {"deployments": deployments, "flow_runs": flow_runs, "automations": automations, "work_pools": pools}


def read_records(team: TeamStack, mlflow: MlflowClient) -> Records:
    mlflow_records, figure = _mlflow_records(team, mlflow)
    studies = json.loads(team.compose("exec", "-T", "worker", "python", "-c", STUDIES).stdout)
    return Records(mlflow=mlflow_records, users=_users(team),
                   prefect=_prefect_records(team), studies=studies, figure=figure)
