"""The release is one number: pyproject.toml's version is what `dae --version` says, the worker
image's tag in docker-compose.yml, and the newest entry of CHANGELOG.md."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _release() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_the_version_is_semantic():
    assert re.fullmatch(r"\d+\.\d+\.\d+", _release())


def test_dae_version_says_the_release():
    done = subprocess.run([sys.executable, "-m", "dae_cli.main", "--version"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout == f"dae-pipeline {_release()}\n", done.stderr


def test_the_worker_image_is_tagged_with_the_release():
    tags = re.findall(r"image: dae-pipeline-worker:(\S+)", (REPO / "docker-compose.yml").read_text())
    assert tags == [_release()]


def test_the_changelog_opens_with_the_release():
    headings = re.findall(r"^## (\d+\.\d+\.\d+) ", (REPO / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert headings[0] == _release() and len(set(headings)) == len(headings)
