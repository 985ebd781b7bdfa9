"""Docker Engine, the test fixtures' base images and docker-compose.yml started as a team
starts it, for tests/test_compose_stack.py.

No container registry is reachable where these tests run, so every third-party image of
docker-compose.yml gets a stand-in built here from Debian's packages and PyPI (the recipes
in tests/compose_fixtures/, each marked TEST FIXTURE): `.env` points the image settings at
them, exactly as an air-gapped team points them at its own mirror. The worker's image is
built by compose itself from the repository's Dockerfile, FROM the Python stand-in."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests import stack

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "compose_fixtures"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_IMAGE = "dae-fixture/debian:bookworm"
HOST_CA_CERTIFICATES = Path("/usr/local/share/ca-certificates")
# .env setting -> the stand-in's recipe (tests/compose_fixtures/<name>.Dockerfile).
STAND_INS = {"POSTGRES_IMAGE": "postgres", "PREFECT_IMAGE": "prefect", "MLFLOW_IMAGE": "mlflow",
             "S3_IMAGE": "s3", "AWS_CLI_IMAGE": "aws-cli"}
PUBLISHED = ("PREFECT_PORT", "MLFLOW_PORT", "S3_PORT", "MODEL_PORT")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Progress:
    """Says on the terminal, past pytest's output capture, what the compose test is doing or
    waiting for (builds and waits take minutes)."""

    def __init__(self, config) -> None:
        self._capture = config.pluginmanager.getplugin("capturemanager")

    def __call__(self, message: str) -> None:
        with self._capture.global_and_fixture_disabled():
            print(f"[compose] {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def run(command: list[str], timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return done


def engine_running() -> bool:
    return shutil.which("docker") is not None and run(["docker", "info"], check=False, timeout=30).returncode == 0


@contextlib.contextmanager
def docker_engine(log: Path, say: Progress) -> Iterator[None]:
    """The running Docker Engine, or one started here (and stopped after) when none runs."""
    if engine_running():
        yield
        return
    say("starting Docker Engine (dockerd)")
    with open(log, "w") as handle:
        daemon = subprocess.Popen(["dockerd"], stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not engine_running():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def image_exists(name: str) -> bool:
    return run(["docker", "image", "inspect", name], check=False).returncode == 0


def debian_image(say: Progress) -> str:
    """Debian bookworm from its packages (debootstrap), imported as a base image."""
    if not image_exists(DEBIAN_IMAGE):
        say("making the Debian base image with debootstrap (about a minute)")
        with tempfile.TemporaryDirectory() as root:
            run(["debootstrap", "--variant=minbase", "bookworm", root, DEBIAN_MIRROR], timeout=900)
            archive = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
            run(["docker", "import", "-", DEBIAN_IMAGE], stdin=archive.stdout, timeout=600)
            archive.wait()
    return DEBIAN_IMAGE


def _recipe_tag(name: str, base: str) -> str:
    """A tag that changes with the recipe, so an edited fixture is rebuilt and an unchanged one reused."""
    digest = hashlib.sha256(base.encode())
    for path in sorted(FIXTURES.glob(f"{name}*")):
        digest.update(path.read_bytes())
    return f"dae-fixture/{name}:{digest.hexdigest()[:12]}"


def build_fixture(name: str, base_arg: str, base: str, say: Progress) -> str:
    tag = _recipe_tag(name, base)
    if image_exists(tag):
        return tag
    say(f"building the {name} stand-in image {tag} (test fixture)")
    with tempfile.TemporaryDirectory() as context:
        for path in FIXTURES.glob(f"{name}*"):
            shutil.copy(path, context)
        certificates = Path(context) / "certs"
        certificates.mkdir()
        for certificate in HOST_CA_CERTIFICATES.glob("*.crt"):
            shutil.copy(certificate, certificates)
        run(["docker", "build", "-q", "-f", f"{context}/{name}.Dockerfile", "--build-arg", f"{base_arg}={base}",
             "-t", tag, context], timeout=1200)
    superseded = run(["docker", "images", "-q", "--filter", f"reference={tag.split(':')[0]}:*"]).stdout.split()
    current = run(["docker", "images", "-q", tag]).stdout.split()
    for image in set(superseded) - set(current):  # an edited recipe's earlier builds: gigabytes each
        run(["docker", "rmi", "-f", image], check=False)
    return tag


def fixture_images(say: Progress) -> dict[str, str]:
    """.env's image settings pointing at the stand-ins, each built unless already there."""
    python = build_fixture("python", "BASE_IMAGE", debian_image(say), say)
    images = {"PYTHON_IMAGE": python}
    for setting, name in STAND_INS.items():
        base_arg, base = ("BASE_IMAGE", DEBIAN_IMAGE) if name == "postgres" else ("PYTHON_IMAGE", python)
        images[setting] = build_fixture(name, base_arg, base, say)
    return images


def published_ports(count: int) -> list[int]:
    """Free ports below the kernel's ephemeral range. The rest of the suite runs beside this
    test (tests/suite.py) and binds port 0 for its servers: the kernel never hands it one
    that the stack is about to publish."""
    lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = []
    for port in random.sample(range(10000, max(lowest_ephemeral, 10100)), 100):
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"not {count} free ports below the ephemeral range")


def compose_command() -> list[str]:
    """v2's `docker compose` where installed, else v1's `docker-compose` (as team-setup.sh)."""
    if run(["docker", "compose", "version"], check=False).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


def clean_checkout(destination: Path) -> Path:
    """The repository's files as a clone has them (tracked and new, not ignored): no .venv, no .env."""
    listed = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def readme_commands(section: str = "## Team setup", readme: Path = REPO / "README.md") -> list[str]:
    """The first shell block of the README's section, one command a line (comments dropped)."""
    text = readme.read_text()
    block = text[text.index(section):].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@dataclass
class TeamStack:
    root: Path  # the clean checkout the stack was started from
    env: dict[str, str]  # the process environment compose runs with (project name, DATA_DIR)
    settings: dict[str, str]  # .env as the test's "editor" left it
    say: Progress
    setup_output: str = ""  # what the README's commands printed

    def compose(self, *args: str, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return run([*compose_command(), *args], cwd=self.root, env=self.env, timeout=timeout, check=check, **kwargs)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def health(self) -> dict[str, str]:
        """Each service's container state: its health where it has a check, else its status."""
        states = {}
        for service in self.compose("config", "--services").stdout.split():
            container = self.container(service)
            if container:
                inspected = json.loads(run(["docker", "inspect", container]).stdout)[0]["State"]
                states[service] = inspected.get("Health", {}).get("Status") or inspected["Status"]
        return states

    def url(self, port_setting: str) -> str:
        return f"http://127.0.0.1:{self.settings[port_setting]}"

    @contextlib.contextmanager
    def paused(self, service: str) -> Iterator[None]:
        """The service's container frozen (docker pause) for the block: what runs in it stays
        where it is, however long the block takes."""
        container = self.container(service)
        run(["docker", "pause", container])
        try:
            yield
        finally:
            run(["docker", "unpause", container])


    def wait_until(self, condition, timeout: float, what: str, every: float = 2.0):
        """``condition()`` once truthy; says what it waits for, and fails naming it."""
        self.say(f"waiting for {what}")
        return wait_until(condition, timeout, what, every)

    def prefect(self, method: str, path: str, auth: str | None = "", **kwargs) -> httpx.Response:
        """A Prefect API call from the host; ``auth`` "" means the stack's auth string, None none."""
        auth_string = self.settings["PREFECT_API_AUTH_STRING"] if auth == "" else auth
        headers = stack.Credentials(prefect_auth_string=auth_string).prefect_headers() if auth_string else {}
        return httpx.request(method, f"{self.url('PREFECT_PORT')}/api{path}", headers=headers, timeout=30, **kwargs)

    def start_deployment(self, deployment: str, parameters: dict) -> str:
        """A flow run of ``deployment`` ("flow/name") created with ``parameters``: its id."""
        flow, name = deployment.split("/")
        found = self.prefect("GET", f"/deployments/name/{flow}/{name}").raise_for_status().json()
        created = self.prefect("POST", f"/deployments/{found['id']}/create_flow_run", json={"parameters": parameters})
        assert created.is_success, created.text
        return created.json()["id"]

    def flow_run(self, flow_run_id: str) -> dict:
        return self.prefect("GET", f"/flow_runs/{flow_run_id}").raise_for_status().json()

    def finished(self, flow_run_id: str, what: str, timeout: float = 600) -> dict:
        """The flow run once in a final state."""
        def final():
            with contextlib.suppress(httpx.HTTPError):
                run = self.flow_run(flow_run_id)
                return run if run["state_type"] in FINAL else None
        return self.wait_until(final, timeout, what, every=3)

    def healthy(self, services: tuple[str, ...], what: str, timeout: float = 300) -> None:
        self.wait_until(lambda: all(self.health().get(name) == "healthy" for name in services), timeout, what)

    def run_readme(self, readme: Path) -> None:
        """The README's "Team setup" commands, word for word, in this stack's folder."""
        outputs = []
        for command in readme_commands(readme=readme):
            self.say(f"README: {command}")
            done = run(["sh", "-c", command], cwd=self.root, env=self.env, timeout=2400)
            outputs.append(done.stdout + done.stderr)
        self.setup_output = "\n".join(outputs)

    def keep_logs_and_remove(self, log: Path) -> None:
        """The stack's last logs kept in ``log``, then its containers, networks and volumes gone."""
        with contextlib.suppress(Exception):
            log.write_text(self.compose("logs", "--no-color", "--tail", "200", check=False).stdout)
            self.say(f"the stack's logs: {log}")
        self.say("removing the stack's containers, networks and volumes")
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)


def wait_until(condition, timeout: float, what: str, every: float = 2.0):
    """``condition()`` once truthy, else an AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(every)
    return value


def env_without_dev_settings() -> dict[str, str]:
    """This process's environment without the settings that would steer compose or the stack."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "MLFLOW_", "DAE_", "COMPOSE_", "DOCKER_"))}


def missing_tools() -> list[str]:
    tools = ["docker", "dockerd", "debootstrap", "git"]
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if shutil.which("docker-compose") is None and subprocess.run(["docker", "compose", "version"],
                                                                 capture_output=True).returncode != 0:
        missing.append("docker compose / docker-compose")
    return missing


def skip_or_fail_without_tools() -> None:
    missing = missing_tools()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} missing; .ci/run installs them (Debian: docker.io docker-compose debootstrap)")
        pytest.skip(f"{missing} missing (Debian: docker.io docker-compose debootstrap)")


def team_settings(images: dict[str, str]) -> dict[str, str]:
    """What a person writes into .env: fresh secrets, the stand-in images, free ports."""
    secret = lambda: secrets.token_hex(12)  # noqa: E731
    return {"POSTGRES_PASSWORD": secret(), "S3_ACCESS_KEY": secret(), "S3_SECRET_KEY": secret(),
            "MLFLOW_ADMIN_PASSWORD": secret(), "MLFLOW_SECRET_KEY": secret(), "DAE_WORKER_PASSWORD": secret(),
            "DAE_SERVING_PASSWORD": secret(), "PREFECT_API_AUTH_STRING": secret(), "TUNING_DB_PASSWORD": secret(),
            **dict(zip(PUBLISHED, map(str, published_ports(len(PUBLISHED))), strict=True)),
            **images}


def team_env(root: Path, settings: dict[str, str], project: str, data: Path) -> dict[str, str]:
    """The environment the README's commands run in: compose's project, the test's "$EDITOR"
    (which writes ``settings`` into .env), and DATA_DIR."""
    (root / "settings.json").write_text(json.dumps(settings))
    return {**env_without_dev_settings(), "COMPOSE_PROJECT_NAME": project,
            "EDITOR": f"{sys.executable} {FIXTURES / 'edit_env.py'} {root / 'settings.json'}", "DATA_DIR": str(data)}


def worker_image() -> str:
    """The worker image's name and tag as docker-compose.yml gives them (the release)."""
    return next(line.split("image:", 1)[1].strip() for line in (REPO / "docker-compose.yml").read_text().splitlines()
                if line.strip().startswith("image: dae-pipeline-worker:"))


@contextlib.contextmanager
def admin_client(team: TeamStack):
    """MLflow's client as the stack's admin (it takes the login from the environment)."""
    from mlflow import MlflowClient

    with pytest.MonkeyPatch.context() as patched:
        patched.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        patched.setenv("MLFLOW_TRACKING_PASSWORD", team.settings["MLFLOW_ADMIN_PASSWORD"])
        uri = team.url("MLFLOW_PORT")
        yield MlflowClient(tracking_uri=uri, registry_uri=uri)
