"""A team's stack made by an earlier release, upgraded in place with the README's commands:
started from a commit of main (its images built from `git archive` of it, its README's "Team
setup" run word for word), given records of every kind (tests/stack_records.py), then its
files replaced by this checkout's as `git pull` replaces them, .env kept, and the README's
"Upgrading" commands run. Every record must still be there and work.

The stand-in S3 store (moto) holds objects in memory, where RustFS keeps them on its volume:
the upgrade leaves its container running (asserted), so the artifacts' check holds for the
same reason it holds with RustFS, and a store restarted by an upgrade is not tested here."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests import compose_stack, stack_records
from tests.compose_stack import Progress, TeamStack
from tests.conftest import make_dataset

pytestmark = pytest.mark.compose
# The oldest commit of main whose stack starts whole (issue 22, the compose test's first
# commit). The next release starts this test from the commit of release 1.0.0 (CHANGELOG.md).
UPGRADE_FROM = "c8c693483fc3a8c7a1e92be182f04d3b1dd194a6"
IDX_IMAGES = "/data/MNIST/raw/t10k-images-idx3-ubyte"


def _export(commit: str, destination: Path) -> None:
    """The commit's files, as a clone checked out at it has them."""
    destination.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=compose_stack.REPO, capture_output=True)
    if archive.returncode != 0:
        pytest.fail(f"commit {commit} is not in this clone ({archive.stderr.decode().strip()}); "
                    "the upgrade test needs main's history (a full clone, not --depth)")
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive.stdout, check=True)


def _pull(folder: Path) -> None:
    """`git pull` to this checkout: every file of the clone replaced by this checkout's, .env kept."""
    for entry in folder.iterdir():
        if entry.name != ".env":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    compose_stack.clean_checkout(folder)


def _predict(team: TeamStack) -> list[dict]:
    done = team.compose("exec", "-T", "worker", "dae", "predict", "--json", IDX_IMAGES)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def upgrade(tmp_path_factory, request):
    """The stack of UPGRADE_FROM with records, then upgraded: (team, mlflow client, records
    before, predictions before)."""
    compose_stack.skip_or_fail_without_tools()
    root = tmp_path_factory.mktemp("upgrade")
    say = Progress(request.config)
    with compose_stack.docker_engine(root / "dockerd.log", say):
        images = compose_stack.fixture_images(say)
        clone = root / "clone"
        _export(UPGRADE_FROM, clone)
        make_dataset(root / "data")
        settings = compose_stack.team_settings(images)
        env = compose_stack.team_env(root, settings, f"dae-upgrade-test-{uuid.uuid4().hex[:6]}", root / "data")
        team = TeamStack(root=clone, env=env, settings=settings, say=say)
        try:
            say(f"starting the stack of {UPGRADE_FROM[:10]} with its README")
            team.run_readme(clone / "README.md")
            with compose_stack.admin_client(team) as mlflow:
                stack_records.make_records(team, mlflow, "upgrade")
                predicted = _predict(team)
                before = stack_records.read_records(team, mlflow)
                store = team.container("s3")
                say("upgrading: `git pull`, then the README's upgrade commands")
                commands = compose_stack.readme_commands("### Upgrading")
                assert commands[0] == "git pull", commands
                _pull(clone)
                for command in commands[1:]:
                    say(f"README: {command}")
                    done = compose_stack.run(["sh", "-c", command], cwd=clone, env=env, timeout=2400)
                    team.setup_output = done.stdout + done.stderr
                assert team.container("s3") == store, "the stand-in store must keep running (objects in memory)"
                yield team, mlflow, before, predicted
        finally:
            team.keep_logs_and_remove(root / "stack.log")


def test_every_record_of_the_earlier_release_is_still_there(upgrade):
    team, mlflow, before, _ = upgrade
    after = stack_records.read_records(team, mlflow)
    assert after.mlflow == before.mlflow  # experiments, runs, metric histories, artifacts, versions, aliases
    assert after.figure == before.figure and after.figure.startswith(b"\x89PNG")
    assert after.users == before.users
    assert after.studies == before.studies
    assert after.prefect["flow_runs"] == before.prefect["flow_runs"]
    assert after.prefect["work_pools"] == before.prefect["work_pools"]
    # The deployments are this release's now (prefect deploy --all), on the same flows and schedules.
    assert {name: (d["flow_id"], d["schedules"], d["paused"]) for name, d in after.prefect["deployments"].items()
            if name in before.prefect["deployments"]} == {
        name: (d["flow_id"], d["schedules"], d["paused"]) for name, d in before.prefect["deployments"].items()}
    assert set(map(tuple, before.prefect["automations"])) <= set(map(tuple, after.prefect["automations"]))


def test_the_upgraded_stack_is_this_release_and_healthy(upgrade):
    team, *_ = upgrade
    states = team.health()
    assert {name: states[name] for name in ("postgres", "prefect-server", "s3", "mlflow")} == dict.fromkeys(
        ("postgres", "prefect-server", "s3", "mlflow"), "healthy")
    release = compose_stack.worker_image().split(":")[1]
    version = team.compose("exec", "-T", "worker", "dae", "--version").stdout.strip()
    assert version == f"dae-pipeline {release}"
    assert "automation ready" in team.setup_output


def test_the_champion_answers_the_same_and_moves_with_its_history(upgrade):
    team, mlflow, _, predicted = upgrade
    now = _predict(team)
    assert [p["digit"] for p in now] == [p["digit"] for p in predicted]
    assert max(abs(a - b) for p, q in zip(now, predicted, strict=True)
               for a, b in zip(p["probabilities"], q["probabilities"], strict=True)) < 1e-6
    champion = mlflow.get_model_version_by_alias(stack_records.MODEL, "champion").version
    other = next(v.version for v in mlflow.search_model_versions(f"name='{stack_records.MODEL}'")
                 if v.version != champion)
    moved = team.compose("exec", "-T", "worker", "dae", "champion", "--set", other, "--reason", "after the upgrade")
    assert f"version {champion} -> version {other}" in moved.stdout
    shown = team.compose("exec", "-T", "worker", "dae", "champion").stdout
    assert f"@champion: version {other}" in shown and "after the upgrade" in shown


def test_a_new_run_completes_on_the_upgraded_stack(upgrade):
    team, mlflow, _, _ = upgrade
    flow_run = team.start_deployment("dae-experiment/lecture", {"config": stack_records.CONFIG, "download": False,
                                                                "experiment_name": "upgrade-lecture"})
    assert team.finished(flow_run, "a lecture run after the upgrade")["state_type"] == "COMPLETED"
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("upgrade-lecture").experiment_id])
    assert sorted(run.info.status for run in runs) == ["FINISHED", "FINISHED"]
