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
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "compose_fixtures"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_IMAGE = "dae-fixture/debian:bookworm"
HOST_CA_CERTIFICATES = Path("/usr/local/share/ca-certificates")
# .env setting -> the stand-in's recipe (tests/compose_fixtures/<name>.Dockerfile).
STAND_INS = {"POSTGRES_IMAGE": "postgres", "PREFECT_IMAGE": "prefect", "MLFLOW_IMAGE": "mlflow",
             "S3_IMAGE": "s3", "AWS_CLI_IMAGE": "aws-cli"}


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


def readme_commands(section: str = "## Team setup") -> list[str]:
    """The first shell block of the README's section, one command a line (comments dropped)."""
    text = (REPO / "README.md").read_text()
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
