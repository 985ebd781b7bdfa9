"""docker-compose.yml and prefect.yaml agree with the stack that the real-stack test runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import stack

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DEPLOYMENTS = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}


def _flags(command: list[str]) -> dict[str, str]:
    flags = {}
    for index, token in enumerate(command):
        if token.startswith("--"):
            name, _, value = token.partition("=")
            if not value and index + 1 < len(command) and not command[index + 1].startswith("--"):
                value = command[index + 1]
            flags[name] = value
    return flags


def test_prefect_server_runs_the_tested_command_on_postgres():
    service = SERVICES["prefect-server"]
    assert service["command"][:3] == stack.PREFECT_SERVER
    assert set(service["environment"]) >= stack.PREFECT_SERVER_ENV
    assert service["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert _flags(service["command"])["--port"] == "4200"


def test_mlflow_server_proxies_artifacts_to_s3_and_allows_the_worker_host():
    service = SERVICES["mlflow"]
    command = service["command"]
    assert command[:2] == stack.MLFLOW_SERVER
    flags = _flags(command)
    assert set(flags) >= stack.MLFLOW_SERVER_FLAGS
    tested = _flags(stack.mlflow_server_command(5000, "postgresql://x", "s3://b"))
    assert set(tested) >= stack.MLFLOW_SERVER_FLAGS
    assert flags["--backend-store-uri"].startswith("postgresql://")
    assert flags["--artifacts-destination"].startswith("s3://")
    assert "mlflow:5000" in flags["--allowed-hosts"].split(",")
    assert set(service["environment"]) >= stack.MLFLOW_SERVER_ENV


def test_worker_runs_the_tested_command_and_reaches_both_servers():
    service = SERVICES["worker"]
    assert service["command"] == stack.WORKER
    environment = service["environment"]
    assert set(environment) >= stack.WORKER_ENV
    mlflow_port = _flags(SERVICES["mlflow"]["command"])["--port"]
    prefect_port = _flags(SERVICES["prefect-server"]["command"])["--port"]
    assert environment["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}"
    assert environment["PREFECT_API_URL"] == f"http://prefect-server:{prefect_port}/api"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(environment), "the worker needs no S3 keys"


def test_model_server_serves_the_champion_as_tested_pinned_to_the_cpu():
    service = SERVICES["model-server"]
    command = service["command"]
    assert command[:3] == stack.MODEL_SERVER
    flags, tested = _flags(command), _flags(stack.model_server_command(5001))
    assert set(flags) == set(tested)
    assert flags["--model-uri"] == tested["--model-uri"] == stack.CHAMPION
    assert flags["--env-manager"] == "local", "no environment rebuild at start"
    assert service["environment"] == stack.MODEL_SERVER_ENV
    assert service["image"] == SERVICES["worker"]["image"], "the worker's image has the model's requirements"
    assert "/ping" in " ".join(service["healthcheck"]["test"])


def test_deployments_use_the_pool_the_workers_serve():
    assert set(DEPLOYMENTS) == {"lecture", "optimizer-x-noise", "nightly", "batch", "crashed-runs"}
    assert {d["work_pool"]["name"] for d in DEPLOYMENTS.values()} == {stack.POOL}
    assert all(d["enforce_parameter_schema"] for d in DEPLOYMENTS.values())
    # Heartbeats on every deployed run: the zombie automation of `dae setup` depends on them.
    heartbeats = {d["work_pool"]["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]
                  for d in DEPLOYMENTS.values()}
    assert heartbeats == {"30"}
    nightly = DEPLOYMENTS["nightly"]
    assert nightly["entrypoint"] == "flows/retrain.py:dae_retrain"
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    (schedule,) = nightly["schedules"]
    assert schedule["cron"] and schedule["timezone"] and schedule["active"]


def test_services_are_pinned_private_and_health_gated():
    for name, service in SERVICES.items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image!r}"
        for port in service.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port} not bound to BIND_ADDRESS"
        for dependency, rule in service.get("depends_on", {}).items():
            assert rule["condition"] in {"service_healthy", "service_completed_successfully"}, (name, dependency)
    for name in ("postgres", "prefect-server", "s3", "mlflow", "model-server"):
        assert "healthcheck" in SERVICES[name], name


def test_compose_secrets_come_from_env_only():
    text = (REPO / "docker-compose.yml").read_text()
    for variable in ("POSTGRES_PASSWORD", "S3_SECRET_KEY", "S3_ACCESS_KEY"):
        assert f"${{{variable}" in text
        assert f"{variable}=" not in text
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert ".env" not in tracked and ".env.example" in tracked


def test_compose_file_validates():
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose (Debian package) is missing; .ci/run installs it")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    for files in (["-f", "docker-compose.yml"], ["-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml"]):
        done = subprocess.run([binary, "--env-file", ".env.example", *files, "config", "-q"], cwd=REPO,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
