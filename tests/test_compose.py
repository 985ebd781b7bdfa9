"""docker-compose.yml and prefect.yaml agree with the stack that the real-stack test runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
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


def _entrypoint(service: dict) -> list[str]:
    """The servers' entry point, as the real-stack test runs it (the script in the repo)."""
    return [service["entrypoint"][0], str(REPO / service["entrypoint"][1].replace("/opt/dae/", "docker/"))]


def test_prefect_server_runs_the_tested_command_on_postgres():
    service = SERVICES["prefect-server"]
    assert _entrypoint(service) == stack.START_SERVER
    assert service["command"][:3] == stack.PREFECT_SERVER
    assert set(service["environment"]) >= stack.PREFECT_SERVER_ENV
    assert service["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert _flags(service["command"])["--port"] == "4200"


def test_mlflow_server_proxies_artifacts_to_s3_and_allows_the_worker_host():
    service = SERVICES["mlflow"]
    command = service["command"]
    assert _entrypoint(service) == stack.START_SERVER
    assert command[:2] == stack.MLFLOW_SERVER
    flags = _flags(command)
    assert set(flags) >= stack.MLFLOW_SERVER_FLAGS
    tested = _flags(stack.mlflow_server_command(5000, "s3://b"))
    assert set(tested) >= stack.MLFLOW_SERVER_FLAGS
    assert "--backend-store-uri" not in flags  # MLFLOW_BACKEND_STORE_URI, which start-server.sh migrates
    assert service["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert flags["--artifacts-destination"].startswith("s3://")
    assert "mlflow:5000" in flags["--allowed-hosts"].split(",")
    assert flags["--app-name"] == tested["--app-name"] == "basic-auth"
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
    assert environment["MLFLOW_TRACKING_PASSWORD"].startswith("${DAE_WORKER_PASSWORD:?")
    assert environment["PREFECT_API_AUTH_STRING"].startswith("${PREFECT_API_AUTH_STRING:?")


def test_the_identities_are_made_by_the_admin_before_anyone_uses_them():
    service = SERVICES["mlflow-users"]
    assert service["command"] == stack.USERS
    assert set(service["environment"]) >= stack.CLIENT_CREDENTIALS_ENV
    assert service["environment"]["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    for name in ("worker", "model-server"):
        assert SERVICES[name]["depends_on"]["mlflow-users"]["condition"] == "service_completed_successfully"


def test_model_server_serves_the_champion_as_tested_pinned_to_the_cpu():
    service = SERVICES["model-server"]
    command = service["command"]
    assert command[:len(stack.MODEL_SERVER)] == stack.MODEL_SERVER
    flags, tested = _flags(command), _flags(stack.model_server_command(5001))
    assert set(flags) == set(tested)
    assert flags["--model"] == tested["--model"] == stack.CHAMPION
    assert service["environment"] == {**stack.MODEL_SERVER_ENV,
                                      "MLFLOW_TRACKING_USERNAME": "${DAE_SERVING_USERNAME:-dae-serving}",
                                      "MLFLOW_TRACKING_PASSWORD": "${DAE_SERVING_PASSWORD:?set in .env (12 "
                                                                  "characters or more)}"}
    assert service["ports"] == ["127.0.0.1:${MODEL_PORT:-5001}:5001"], "no login: never published beyond loopback"
    assert service["image"] == SERVICES["worker"]["image"], "the worker's image has the model's requirements"
    assert "/ping" in " ".join(service["healthcheck"]["test"])


def test_the_database_init_gives_the_workers_a_studies_database_of_their_own_role(tmp_path):
    """docker/postgres-init.sh run against a real PostgreSQL: the studies' role owns its
    database (Optuna creates its tables there), is no superuser, and the worker's
    DAE_TUNING_STORAGE names that role and database, never the superuser's password."""
    import optuna

    if not stack.postgres_reachable():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not reachable; CI must run this test")
        pytest.skip("PostgreSQL is not reachable")
    suffix = uuid.uuid4().hex[:8]
    names = {"PREFECT_DB": f"t_prefect_{suffix}", "MLFLOW_DB": f"t_mlflow_{suffix}",
             "MLFLOW_AUTH_DB": f"t_auth_{suffix}", "TUNING_DB": f"t_optuna_{suffix}",
             "TUNING_DB_USER": f"t_tuning_{suffix}"}
    env = {"PATH": os.environ["PATH"], "PGHOST": stack.PG_HOST, "PGPORT": str(stack.PG_PORT),
           "POSTGRES_USER": "postgres", "TUNING_DB_PASSWORD": "change-me-it's-a-test", **names}
    try:
        done = subprocess.run(["sh", str(REPO / "docker" / "postgres-init.sh")], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        storage = f"postgresql+psycopg://{names['TUNING_DB_USER']}@{stack.PG_HOST}:{stack.PG_PORT}/{names['TUNING_DB']}"
        optuna.create_study(study_name="owned", storage=storage).optimize(lambda trial: trial.suggest_float("x", 0, 1),
                                                                          n_trials=2)
        assert len(optuna.load_study(study_name="owned", storage=storage).trials) == 2
        role = subprocess.run(["psql", "-h", stack.PG_HOST, "-U", "postgres", "-tAc",
                               f"SELECT rolsuper FROM pg_roles WHERE rolname = '{names['TUNING_DB_USER']}'"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert role == "f"
    finally:
        for database in ("PREFECT_DB", "MLFLOW_DB", "MLFLOW_AUTH_DB", "TUNING_DB"):
            stack.psql(f"DROP DATABASE IF EXISTS {names[database]} WITH (FORCE)")
        stack.psql(f"DROP ROLE IF EXISTS {names['TUNING_DB_USER']}")
    worker = SERVICES["worker"]["environment"]["DAE_TUNING_STORAGE"]
    assert worker.startswith("postgresql+psycopg://${TUNING_DB_USER:-dae_tuning}:${TUNING_DB_PASSWORD")
    assert worker.endswith("@postgres:5432/${TUNING_DB:-optuna}") and "POSTGRES_PASSWORD" not in worker


def test_deployments_use_the_pool_the_workers_serve():
    assert set(DEPLOYMENTS) == {"lecture", "optimizer-x-noise", "optimizers", "nightly", "batch", "crashed-runs"}
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
            bound_to = "${BIND_ADDRESS:-127.0.0.1}:" if name in ("prefect-server", "mlflow") else "127.0.0.1:"
            assert port.startswith(bound_to), f"{name}: {port} not bound to {bound_to}"
        for dependency, rule in service.get("depends_on", {}).items():
            assert rule["condition"] in {"service_healthy", "service_completed_successfully"}, (name, dependency)
    for name in ("postgres", "prefect-server", "s3", "mlflow", "model-server"):
        assert "healthcheck" in SERVICES[name], name


SECRETS = ("POSTGRES_PASSWORD", "S3_SECRET_KEY", "S3_ACCESS_KEY", "TUNING_DB_PASSWORD", *stack.Credentials().secrets())


def _env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_compose_secrets_come_from_env_only():
    text = (REPO / "docker-compose.yml").read_text()
    example = _env_file(REPO / ".env.example")
    for variable in SECRETS:
        assert f"${{{variable}" in text
        assert f"{variable}=" not in text
        assert example[variable].startswith("change-me"), f".env.example must not hold a usable {variable}"
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    assert used <= set(example), f".env.example does not document {sorted(used - set(example))}"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert ".env" not in tracked and ".env.example" in tracked
    # The image gets the code it needs and nothing else: no `COPY .`, so never a .env.
    copied = [line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("COPY")]
    assert "." not in copied and ".env" not in copied


def _start_server(bind_address: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*stack.START_SERVER, "echo", "started"], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "BIND_ADDRESS": bind_address, **env})


def test_servers_refuse_to_start_exposed_with_the_example_secrets():
    example = _env_file(REPO / ".env.example")
    url = f"postgresql://dae:{example['POSTGRES_PASSWORD']}@postgres:5432/mlflow"
    refused = _start_server("0.0.0.0", DATABASE_URL=url, MLFLOW_AUTH_ADMIN_PASSWORD="a-real-secret-1234")
    assert refused.returncode != 0 and refused.stdout == ""
    assert "DATABASE_URL" in refused.stderr and "MLFLOW_AUTH_ADMIN_PASSWORD" not in refused.stderr
    assert _start_server("127.0.0.1", DATABASE_URL=url).stdout == "started\n", "loopback: example values allowed"
    real_password = "s3cret-value"
    assert _start_server("192.168.1.20", DATABASE_URL=f"postgresql://dae:{real_password}@p/m").stdout == "started\n"


def test_the_mlflow_login_settings_are_written_at_start_not_shipped(tmp_path):
    password = "pw"
    database = f"postgresql://dae:{password}@postgres/mlflow_auth"
    done = _start_server("127.0.0.1", MLFLOW_AUTH_DATABASE_URI=database, MLFLOW_AUTH_CONFIG_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    written = tmp_path / "mlflow-auth.ini"
    assert f"database_uri = {database}" in written.read_text()
    assert "default_permission = READ" in written.read_text()
    assert written.stat().st_mode & 0o077 == 0, "the settings hold the database password: owner only"


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


def test_compose_refuses_to_start_without_the_credentials(tmp_path):
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (see test_compose_file_validates)")
    example = _env_file(REPO / ".env.example")
    for missing in ("MLFLOW_ADMIN_PASSWORD", "DAE_WORKER_PASSWORD", "PREFECT_API_AUTH_STRING", "MLFLOW_SECRET_KEY"):
        for bind_address in ("127.0.0.1", "0.0.0.0"):
            env_file = tmp_path / f"{missing}.env"
            kept = {**example, "BIND_ADDRESS": bind_address}
            env_file.write_text("".join(f"{k}={v}\n" for k, v in kept.items() if k != missing))
            done = subprocess.run([binary, "--env-file", str(env_file), "-f", "docker-compose.yml", "config", "-q"],
                                  cwd=REPO, capture_output=True, text=True)
            assert done.returncode != 0 and missing in done.stderr, (missing, bind_address, done.stderr)


def _rendered_compose() -> dict:
    """docker-compose.yml as compose sees it with .env.example (anchors merged, defaults filled)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose (Debian package) is missing; .ci/run installs it")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    done = subprocess.run([binary, "--env-file", ".env.example", "-f", "docker-compose.yml", "config"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    return yaml.safe_load(done.stdout)["services"]


def test_every_service_on_the_worker_image_can_build_it():
    """Compose v1 pulls the image of a service without `build:` before building the others,
    which fails on a machine that has neither the image nor a registry to pull it from."""
    services = _rendered_compose()
    worker_image = services["worker"]["image"]
    on_worker_image = [name for name, service in services.items() if service.get("image") == worker_image]
    assert set(on_worker_image) == {"worker", "mlflow-users", "model-server"}
    for name in on_worker_image:
        assert services[name]["build"] == services["worker"]["build"], name


def test_third_party_images_and_the_python_base_are_settings():
    example = _env_file(REPO / ".env.example")
    for name, service in SERVICES.items():
        image = service.get("image", "")
        if image.startswith("dae-pipeline"):
            continue
        setting = re.fullmatch(r"\$\{([A-Z0-9_]+):-([^}]+)\}", image)
        assert setting, f"{name}: image {image!r} is not a setting"
        assert example[setting[1]] == setting[2], f".env.example's {setting[1]} differs from the compose default"
    dockerfile = (REPO / "Dockerfile").read_text()
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)[1]
    assert "FROM ${PYTHON_IMAGE}" in dockerfile and example["PYTHON_IMAGE"] == default
    assert _rendered_compose()["worker"]["build"]["args"]["PYTHON_IMAGE"] == default


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else():
    """A .venv from `make install` is several GB, a .env holds the secrets: neither is sent."""
    patterns = [line for line in (REPO / ".dockerignore").read_text().splitlines()
                if line and not line.startswith("#")]
    assert patterns[0] == "**", "everything is ignored unless named"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {token.rstrip("/") for line in (REPO / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY") and "--from=" not in line  # a stage's file, not the context's
              for token in line.split()[1:-1]}
    assert copied == allowed


def test_links_printed_in_the_worker_open_from_the_host():
    services = _rendered_compose()
    assert services["worker"]["environment"]["PREFECT_UI_URL"] == "http://127.0.0.1:4200"
    assert services["prefect-server"]["environment"]["PREFECT_UI_API_URL"] == "http://127.0.0.1:4200/api"


def test_the_deployment_guide_shows_the_team_setup_script_as_it_is():
    script = (REPO / "docker" / "team-setup.sh").read_text()
    guide = (REPO / "docs" / "deployment.md").read_text()
    shown = guide.split("```sh\n# docker/team-setup.sh\n", 1)[1].split("```", 1)[0]
    assert shown == script.split("\n", 1)[1], "docs/deployment.md's copy of docker/team-setup.sh differs from the file"


def test_team_setup_refuses_to_start_without_env(tmp_path):
    (tmp_path / "docker").mkdir()
    shutil.copy(REPO / "docker" / "team-setup.sh", tmp_path / "docker")
    done = subprocess.run(["sh", str(tmp_path / "docker" / "team-setup.sh")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["team-setup: no .env here",
                                        "  fix: cp .env.example .env, then set every secret in it"]
