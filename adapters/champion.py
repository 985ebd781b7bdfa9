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
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
from mlflow.entities.model_registry import ModelVersion
from pydantic import BaseModel

from adapters.mlflow_client import client
from adapters.mlflow_store import tracking_uri
from adapters.model_registry import alias_version
from adapters.run_search import finished_run
from dae_core.errors import EXIT_CONFIG, EXIT_SERVER, DaeError
from dae_core.summary import REGISTERED_MODEL

CHAMPION = "champion"
MOVE_TAG_PREFIX = "dae.champion.move."
# Version tags, named for the registry's versions table.
TEST_ACCURACY, NOISY_ACCURACY, DATASET, DATASET_DIGEST, PRESET, DECISION = (
    "test_accuracy", "noisy_accuracy", "dataset", "dataset_digest", "preset", "champion_decision")
_DECISION_HEADING = "### Champion decision"
# A reason is read in one line of the history: bounded, and without the characters that could
# start another line (a newline, any control character) or another field of its own line.
MAX_REASON = 500
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

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


class ChampionNotMoved(DaeError):
    """A write that records a move of ``@champion`` failed after the alias moved: the move
    was undone, or (said so) could not be."""

    exit_code = EXIT_SERVER


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
    registry = client()
    if registry.get_registered_model(REGISTERED_MODEL).description != MODEL_DESCRIPTION:
        registry.update_registered_model(REGISTERED_MODEL, description=MODEL_DESCRIPTION)


def describe_version(card: VersionCard) -> None:
    registry = client()
    registry.update_model_version(REGISTERED_MODEL, card.version, description=card.description())
    for key, value in card.tags().items():
        registry.set_model_version_tag(REGISTERED_MODEL, card.version, key, value)


def checked_reason(reason: str) -> str:
    """``reason`` as the history keeps it: stripped, one line of at most ``MAX_REASON``
    characters; anything else is refused before the registry is touched."""
    reason = reason.strip()
    if not reason:
        raise ChampionRefused("--reason is empty: every move of @champion says why",
                              '--reason "rollback: version 7 misreads sevens"')
    if len(reason) > MAX_REASON:
        raise ChampionRefused(f"--reason is {len(reason)} characters; the history keeps at most {MAX_REASON}",
                              "say why in a sentence; link a longer text (an issue, a document) from it")
    if _UNPRINTABLE.search(reason):
        raise ChampionRefused("--reason holds a line break or a control character: each move is one line of the "
                              "history", "write the reason on one line")
    return reason


def _one_line(text: str) -> str:
    """An identity as the history shows it: one line, no field separator of its own."""
    return _UNPRINTABLE.sub(" ", text).replace(" | ", " / ")


def record_decision(version: str, action: str, text: str, undo: list[Callable[[], None]] | None = None) -> None:
    """The champion decision about ``version`` (tag ``champion_decision``: the action) at the
    end of its description, replacing an earlier one. ``undo``: where each write, once made,
    leaves what puts it back."""
    registry = client()
    found = registry.get_model_version(REGISTERED_MODEL, version)
    current, earlier_action = found.description or "", found.tags.get(DECISION)
    card = current.split(f"\n\n{_DECISION_HEADING}")[0]
    registry.update_model_version(REGISTERED_MODEL, version, description=f"{card}\n\n{_DECISION_HEADING}\n{text}")
    if undo is not None:
        undo.append(lambda: registry.update_model_version(REGISTERED_MODEL, version, description=current))
    registry.set_model_version_tag(REGISTERED_MODEL, version, DECISION, action)
    if undo is not None:
        undo.append(lambda: registry.delete_model_version_tag(REGISTERED_MODEL, version, DECISION)
                    if earlier_action is None
                    else registry.set_model_version_tag(REGISTERED_MODEL, version, DECISION, earlier_action))


def move_champion(version: str, reason: str, by: str, decision: tuple[str, str]) -> ChampionMove | None:
    """Point ``@champion`` at ``version``, record the move in the history and the ``decision``
    (action, text) on the version, all or none: every value is checked before the first
    write, and a write that fails after the alias moved undoes the others (the alias back
    where it was). None, and nothing written, where it already points there."""
    reason = checked_reason(reason)
    previous = alias_version(CHAMPION)
    if previous == version:
        return None
    move = ChampionMove(version=version, previous=previous,
                        at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), by=_one_line(by), reason=reason)
    registry = client()
    try:
        registry.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code == "PERMISSION_DENIED" or "403" in str(error):
            raise RegistryRefused(f"{tracking_uri()} refused to move @{CHAMPION} for this identity "
                                  f"({str(error).splitlines()[0]})") from None
        raise
    undo: list[Callable[[], None]] = [lambda: _point_champion_back(previous)]
    try:
        tag = f"{MOVE_TAG_PREFIX}{time.time_ns()}"
        registry.set_registered_model_tag(REGISTERED_MODEL, tag, move.line())
        undo.append(lambda: registry.delete_registered_model_tag(REGISTERED_MODEL, tag))
        record_decision(version, *decision, undo=undo)
    except Exception as error:
        raise _undone(undo, move, error) from None
    return move


def _point_champion_back(previous: str | None) -> None:
    if previous is None:
        client().delete_registered_model_alias(REGISTERED_MODEL, CHAMPION)
    else:
        client().set_registered_model_alias(REGISTERED_MODEL, CHAMPION, previous)


def _undone(undo: list[Callable[[], None]], move: ChampionMove, error: Exception) -> ChampionNotMoved:
    """Undo the writes that happened, last first; the error that says how it ended."""
    cause, failed = _first_line(error), []
    for step in reversed(undo):
        try:
            step()
        except Exception as undo_error:  # the registry went away mid-way: said, not hidden
            failed.append(_first_line(undo_error))
    was = f"version {move.previous}" if move.previous else "no version"
    if not failed:
        return ChampionNotMoved(f"the registry refused to record the move of @{CHAMPION} to version {move.version} "
                                f"({cause}): nothing moved, @{CHAMPION} is {was} as before",
                                "run the command again once the tracking server answers (`dae champion` shows "
                                "the champion and its history)")
    return ChampionNotMoved(f"the move of @{CHAMPION} to version {move.version} is half made: the registry "
                            f"refused to record it ({cause}) and to undo it ({'; '.join(failed)})",
                            f"`dae champion` shows where it points; put it back with `dae champion --set "
                            f"{move.previous or move.version} --reason \"undo a half-made move\"`")


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def champion_history() -> list[ChampionMove]:
    """Every recorded move of ``@champion``, oldest first."""
    tags = client().get_registered_model(REGISTERED_MODEL).tags
    return [ChampionMove.from_line(tags[key])
            for key in sorted((k for k in tags if k.startswith(MOVE_TAG_PREFIX)),
                              key=lambda k: int(k.removeprefix(MOVE_TAG_PREFIX)))]


def version_named(text: str) -> str:
    """A version number however a person writes it ("3", " 03", "v3", "version 3") as the
    registry spells it ("3"); anything else is refused."""
    found = re.fullmatch(r"\s*(?:v|version\s*)?0*(\d{1,18})\s*", text, flags=re.IGNORECASE)
    if found is None or found.group(1) == "0":
        raise ChampionRefused(f"{text!r} is not a version number of {REGISTERED_MODEL}",
                              "pass the version as a number, e.g. --set 3 (`dae champion` lists the moves)")
    return found.group(1)


def checked_version(version: str) -> ModelVersion:
    """The registered ``version``, if it may be champion: it exists, its training run
    finished, and it has a finite test accuracy (its tag, or its run's metric)."""
    registry = client()
    try:
        found = registry.get_model_version(REGISTERED_MODEL, version)
    except mlflow.exceptions.MlflowException:
        known = sorted((str(v.version) for v in registry.search_model_versions(f"name='{REGISTERED_MODEL}'")), key=int)
        raise ChampionRefused(f"{REGISTERED_MODEL} has no version {version!r}",
                              f"pick one of {', '.join(known) or 'none (run `dae run` first)'}") from None
    run = finished_run(found.run_id)
    accuracy = float(found.tags.get(TEST_ACCURACY) or (run.data.metrics.get("test/accuracy", math.nan)
                                                        if run else math.nan))
    if run is None or not math.isfinite(accuracy):
        raise ChampionRefused(f"version {version} failed its checks: its training run {found.run_id} "
                              + ("did not finish" if run is None else "has no test accuracy"),
                              "pick a version whose run finished (`dae champion` lists the moves)")
    return found


@dataclass(frozen=True)
class ChampionCard:
    """What ``dae champion`` says of the champion: its version, its scores, its run."""

    version: str
    run_id: str
    scores: dict[str, str]  # version tag -> percent, as recorded (test_accuracy, noisy_accuracy)


def champion_card() -> ChampionCard | None:
    """The version ``@champion`` names now, with its recorded scores; None where there is none."""
    version = alias_version(CHAMPION)
    if version is None:
        return None
    found = client().get_model_version(REGISTERED_MODEL, version)
    return ChampionCard(version, found.run_id, {name: found.tags[name] for name in (TEST_ACCURACY, NOISY_ACCURACY)
                                                if name in found.tags})
