"""What `make backup` and `make restore` cost on a team stack holding a lecture run (full
MNIST), a comparison and a tuning (docs/deployment.md, "Backing up and restoring").

    python benchmarks/stack_archive.py DATA_DIR [FOLDER]

DATA_DIR holds MNIST/raw/. The stack is started from this commit's files (`git archive HEAD`)
in FOLDER (default a temporary one) with the README's "Team setup", on the compose test's
stand-in images (tests/compose_stack.py: no registry needed); it is removed at the end.
Prints each step's seconds, the archive's parts, and the restore's own steps."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dae_core.config import PRESETS  # noqa: E402
from tests import compose_stack  # noqa: E402
from tests.compose_stack import TeamStack  # noqa: E402


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def timed(what: str, command: list[str], team: TeamStack) -> str:
    started = time.monotonic()
    done = subprocess.run(command, cwd=team.root, env=team.env, capture_output=True, text=True, check=True)
    say(f"{what}: {time.monotonic() - started:.0f} s")
    return done.stdout


def main(data: Path, root: Path) -> None:
    clone = root / "clone"
    clone.mkdir(parents=True)
    subprocess.run(f"git -C {REPO} archive HEAD | tar -x -C {clone}", shell=True, check=True)
    settings = compose_stack.team_settings(compose_stack.fixture_images(say))
    env = compose_stack.team_env(root, settings, f"dae-archive-bench-{uuid.uuid4().hex[:6]}", data)
    team = TeamStack(root=clone, env=env, settings=settings, say=say)
    try:
        started = time.monotonic()
        team.run_readme(clone / "README.md")
        say(f"team setup: {time.monotonic() - started:.0f} s")
        smoke = PRESETS["smoke"]
        for name, deployment, parameters in (
                ("lecture run", "dae-experiment/lecture", {"download": False}),
                ("comparison (smoke, 1 seed)", "dae-compare/optimizer-x-noise",
                 {"base": smoke, "seeds": 1, "download": False}),
                ("tuning (smoke, 2 trials a cell)", "dae-tune/optimizers",
                 {"base": smoke, "trials": 2, "download": False})):
            started = time.monotonic()
            state = team.finished(team.start_deployment(deployment, parameters), name, timeout=3600)["state_type"]
            say(f"{name}: {state} in {time.monotonic() - started:.0f} s")
        timed("make backup", ["make", "-s", "backup", f"BACKUP_DIR={root / 'backups'}"], team)
        (archive,) = (root / "backups").glob("dae-backup-*.tar")
        manifest = json.loads(subprocess.run(["tar", "-xOf", str(archive), "manifest.json"], capture_output=True,
                                             check=True).stdout)
        say(f"archive {archive.stat().st_size / 1e6:.1f} MB; " + ", ".join(
            f"{part} {entry['bytes'] / 1e3:.0f} kB / {sum(entry['tables'].values())} rows"
            for part, entry in manifest["databases"].items())
            + f"; bucket {manifest['artifacts']['bytes'] / 1e6:.1f} MB / {manifest['artifacts']['objects']} objects")
        team.compose("down", "--volumes", "--timeout", "20")
        print(timed("make restore onto an empty stack", ["make", "-s", "restore", f"ARCHIVE={archive}"], team))
    finally:
        team.keep_logs_and_remove(root / "stack.log")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as temporary:
        main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(temporary))
