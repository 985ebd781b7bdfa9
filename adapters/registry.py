"""The registered model as its own card: what it is and how to call it, what each version
scored on which data from which run, and who moved ``@champion`` when and why.

The card lives in MLflow's registry, where people look: the registered model's
description, each version's description and tags (the versions table compares them at a
glance), and the champion's history as registered-model tags ``dae.champion.move.<ns>``,
one per move, never overwritten, each a line a person reads in the registry UI:
``<when> | <from> -> <to> | <by> | <why>`` (MLflow keeps no alias history itself).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import mlflow
from mlflow.entities.model_registry import ModelVersion
from pydantic import BaseModel

from adapters import tracking
from dae_core.errors import EXIT_CONFIG, EXIT_SERVER, DaeError
from dae_core.summary import REGISTERED_MODEL

CHAMPION = "champion"
MOVE_TAG_PREFIX = "dae.champion.move."
# Version tags, named for the registry's versions table.
TEST_ACCURACY, NOISY_ACCURACY, DATASET, DATASET_DIGEST, PRESET, DECISION = (
    "test_accuracy", "noisy_accuracy", "dataset", "dataset_digest", "preset", "champion_decision")
_DECISION_HEADING = "### Champion decision"

MODEL_DESCRIPTION = f"""\
**{REGISTERED_MODEL}**: an MNIST digit classifier, the encoder of a denoising sparse autoencoder
(784-400 Tanh, pretrained on noisy digits) under a Linear(400, 10) head, fine-tuned with SGD.
Each version is one `dae-experiment` run; its description and tags say what it scored, on which
data, from which run, and why it is (or is not) the champion.

- **Input**: float32 array (N, 784): 28x28 grey digits, white on black, scaled to [0, 1].
- **Output**: float32 array (N, 10): class probabilities, each row summing to 1.
- **Aliases**: `@champion` is served; `@challenger` is the latest retrain that did not beat it.
  `dae champion` shows who moved `@champion` when and why; `dae champion --set VERSION --reason TEXT`
  moves it back or forward.

How to call it:
- CLI: `dae predict digit.png` (any picture size, light or dark paper; `--model models:/{REGISTERED_MODEL}/3`)
- batch: `prefect deployment run dae-score/batch --param source=/data/incoming`
  (predictions CSV, accuracy where labels are known)
- HTTP: `curl -X POST http://HOST:5001/invocations -H 'Content-Type: application/json'
  -d '{{"inputs": [[0.0, ...784 values...]]}}'` (the stack's `model-server`)
"""


class ChampionMove(BaseModel):
    """One move of ``@champion``: to ``version`` from ``previous``, when, by whom, why."""

    version: str
    previous: str | None
    at: str  # ISO 8601, UTC
    by: str  # an MLflow identity or user, or "flow run <name> (<id>)"
    reason: str

    def line(self) -> str:
        return f"{self.at} | {self.previous or '-'} -> {self.version} | {self.by} | {self.reason}"

    @classmethod
    def from_line(cls, line: str) -> ChampionMove:
        at, versions, by, reason = line.split(" | ", 3)
        previous, version = versions.split(" -> ")
        return cls(version=version, previous=None if previous == "-" else previous, at=at, by=by, reason=reason)


class ChampionRefused(DaeError):
    """``dae champion --set`` names a version that does not exist or failed its checks."""

    exit_code = EXIT_CONFIG


class RegistryRefused(DaeError):
    """The MLflow server refused a registry change to this identity."""

    exit_code = EXIT_SERVER
    fix = ("moving @champion needs EDIT on the registered model: use an identity that holds it (the worker's, or "
           "an admin's), or ask an admin to grant it")


@dataclass(frozen=True)
class VersionCard:
    """What a registered version's description and tags say about it."""

    version: str
    run_id: str
    flow_run: str  # the Prefect flow run that trained it, as a link or an id
    dataset: str
    dataset_digest: str
    preset: str
    changes: str  # the fields changed from the preset, in words ("none" if none)
    test_accuracy: float
    noisy_accuracy: float

    def description(self) -> str:
        return "\n".join([
            f"Version {self.version}: test accuracy {self.test_accuracy:.2f}%, noisy test digits "
            f"{self.noisy_accuracy:.2f}%.",
            "",
            f"- source run: `{self.run_id}`; Prefect flow run: {self.flow_run}",
            f"- data: {self.dataset}, digest `{self.dataset_digest[:16]}`",
            f"- preset `{self.preset}`; changed fields: {self.changes}",
        ])

    def tags(self) -> dict[str, str]:
        return {TEST_ACCURACY: f"{self.test_accuracy:.2f}", NOISY_ACCURACY: f"{self.noisy_accuracy:.2f}",
                DATASET: self.dataset, DATASET_DIGEST: self.dataset_digest, PRESET: self.preset}


def describe_model() -> None:
    """The registered model's description, written when it differs (the first registration,
    or a new text in a new release)."""
    client = tracking.client()
    if client.get_registered_model(REGISTERED_MODEL).description != MODEL_DESCRIPTION:
        client.update_registered_model(REGISTERED_MODEL, description=MODEL_DESCRIPTION)


def describe_version(card: VersionCard) -> None:
    client = tracking.client()
    client.update_model_version(REGISTERED_MODEL, card.version, description=card.description())
    for key, value in card.tags().items():
        client.set_model_version_tag(REGISTERED_MODEL, card.version, key, value)


def record_decision(version: str, action: str, text: str) -> None:
    """The champion decision about ``version`` (tag ``champion_decision``: the action) at the
    end of its description, replacing an earlier one."""
    client = tracking.client()
    current = client.get_model_version(REGISTERED_MODEL, version).description or ""
    card = current.split(f"\n\n{_DECISION_HEADING}")[0]
    client.update_model_version(REGISTERED_MODEL, version, description=f"{card}\n\n{_DECISION_HEADING}\n{text}")
    client.set_model_version_tag(REGISTERED_MODEL, version, DECISION, action)


def move_champion(version: str, reason: str, by: str) -> ChampionMove | None:
    """Point ``@champion`` at ``version`` and record the move; None, and nothing recorded,
    where it already points there (a retrain deciding on the version its own run crowned)."""
    previous = tracking.alias_version(CHAMPION)
    if previous == version:
        return None
    move = ChampionMove(version=version, previous=previous,
                        at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), by=by, reason=reason)
    client = tracking.client()
    try:
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code == "PERMISSION_DENIED" or "403" in str(error):
            raise RegistryRefused(f"{tracking.tracking_uri()} refused to move @{CHAMPION} for this identity "
                                  f"({str(error).splitlines()[0]})") from None
        raise
    client.set_registered_model_tag(REGISTERED_MODEL, f"{MOVE_TAG_PREFIX}{time.time_ns()}", move.line())
    return move


def champion_history() -> list[ChampionMove]:
    """Every recorded move of ``@champion``, oldest first."""
    tags = tracking.client().get_registered_model(REGISTERED_MODEL).tags
    return [ChampionMove.from_line(tags[key])
            for key in sorted((k for k in tags if k.startswith(MOVE_TAG_PREFIX)),
                              key=lambda k: int(k.removeprefix(MOVE_TAG_PREFIX)))]


def checked_version(version: str) -> ModelVersion:
    """The registered ``version``, if it may be champion: it exists, its training run
    finished, and it has a finite test accuracy (its tag, or its run's metric)."""
    client = tracking.client()
    try:
        found = client.get_model_version(REGISTERED_MODEL, version)
    except mlflow.exceptions.MlflowException:
        known = sorted((str(v.version) for v in client.search_model_versions(f"name='{REGISTERED_MODEL}'")), key=int)
        raise ChampionRefused(f"{REGISTERED_MODEL} has no version {version!r}",
                              f"pick one of {', '.join(known) or 'none (run `dae run` first)'}") from None
    run = tracking.finished_run(found.run_id)
    accuracy = float(found.tags.get(TEST_ACCURACY) or (run.data.metrics.get("test/accuracy", math.nan)
                                                        if run else math.nan))
    if run is None or not math.isfinite(accuracy):
        raise ChampionRefused(f"version {version} failed its checks: its training run {found.run_id} "
                              + ("did not finish" if run is None else "has no test accuracy"),
                              "pick a version whose run finished (`dae champion` lists the moves)")
    return found
