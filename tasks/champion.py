"""Champion / challenger decisions for scheduled retraining."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from adapters import champion, mlflow_runs, model_registry
from adapters.champion import CHAMPION
from adapters.tags import CHAMPION_NOTE, RETRAIN
from dae_core.config import ExperimentConfig
from dae_core.data import load_split
from dae_core.metrics import accuracy_percent, predict
from tasks.data import DatasetRef
from tasks.run import flow_run_identity

CHALLENGER = "challenger"


class Action(StrEnum):
    """What a retrain does with its new version (tag `dae.retrain.action`)."""

    FIRST_CHAMPION = "first-champion"  # no champion yet: it becomes champion
    PROMOTED = "promoted"  # better by the margin: it takes @champion
    CHALLENGER = "challenger"  # not better by the margin: it becomes @challenger


@dataclass(frozen=True)
class Decision:
    action: Action
    new_version: str
    new_accuracy: float
    champion_version: str | None
    champion_accuracy: float | None
    margin: float
    reason: str


@task(name="crown-first-champion")
def crown_first_version(version: str, run_id: str) -> bool:
    """The first registered version becomes ``champion`` when there is none (the rule of
    ``decide``), so that a model can be used after the very first run. True if it did."""
    if model_registry.alias_version(CHAMPION) is not None:
        return False
    reason = "no champion yet: the first registered version becomes champion"
    champion.move_champion(version, reason, flow_run_identity(),
                           decision=(Action.FIRST_CHAMPION, f"**{Action.FIRST_CHAMPION}**: {reason}"))
    mlflow_runs.set_tags(run_id, {CHAMPION_NOTE: f"version {version}: the first registered version"})
    return True


@task(name="score-registered-model")
def score_version(version: str, config: ExperimentConfig, dataset: DatasetRef) -> float:
    """Test accuracy (percent) of a registered version, loaded back from the registry, so
    the new model and the champion are scored by the same code on the same images."""
    import torch

    test = load_split(Path(dataset.raw_dir), train=False, limit=config.data.test_limit)
    model = model_registry.load_registered(version)
    return accuracy_percent(predict(model, test.flat_pixels(torch.float32)), test.labels)


def decide(new_version: str, new_accuracy: float, champion_version: str | None,
           champion_accuracy: float | None, margin: float) -> Decision:
    """Pure decision rule: the first model becomes champion; later ones only when better by
    at least ``margin`` points; everything else becomes challenger."""
    if not math.isfinite(new_accuracy):
        raise ValueError(f"new model version {new_version} scored {new_accuracy}: refusing to alias it")
    if champion_version is None:
        return Decision(Action.FIRST_CHAMPION, new_version, new_accuracy, None, None, margin,
                        "no champion yet: the first model becomes champion")
    gain = new_accuracy - champion_accuracy
    if gain >= margin:
        return Decision(Action.PROMOTED, new_version, new_accuracy, champion_version, champion_accuracy, margin,
                        f"better by {gain:+.2f} points >= margin {margin:.2f}")
    return Decision(Action.CHALLENGER, new_version, new_accuracy, champion_version, champion_accuracy, margin,
                    f"difference {gain:+.2f} points < margin {margin:.2f}: champion stays")


@task(name="apply-decision")
def apply_decision(decision: Decision, run_id: str) -> Decision:
    alias = CHALLENGER if decision.action is Action.CHALLENGER else CHAMPION
    against = (f"champion version {decision.champion_version} at {decision.champion_accuracy:.2f}%"
               if decision.champion_version else "no champion")
    recorded = (decision.action, f"**{decision.action}** by retrain: {decision.new_accuracy:.2f}% against {against}, "
                                 f"margin {decision.margin:.2f} points; {decision.reason}")
    if alias == CHALLENGER:
        model_registry.set_alias(CHALLENGER, decision.new_version)
        champion.record_decision(decision.new_version, *recorded)
    elif champion.move_champion(decision.new_version, decision.reason, flow_run_identity(), recorded) is None:
        champion.record_decision(decision.new_version, *recorded)  # already champion (its own run crowned it)
    tags = {f"{RETRAIN}.{key}": ("" if value is None else value) for key, value in asdict(decision).items()}
    mlflow_runs.set_tags(run_id, tags)
    before = (f"version {decision.champion_version}: {decision.champion_accuracy:.2f}%"
              if decision.champion_version else "none")
    create_markdown_artifact(
        "\n".join([
            "# Retraining decision",
            f"- decision: **{decision.action}** (alias `{alias}` -> version {decision.new_version})",
            f"- new model: version {decision.new_version}: {decision.new_accuracy:.2f}%",
            f"- champion before: {before}",
            f"- margin: {decision.margin:.2f} points",
            f"- reason: {decision.reason}",
            f"- MLflow run: `{run_id}`",
        ]),
        key="dae-retrain-decision", description="Champion / challenger decision",
    )
    get_run_logger().info("retrain decision: %s (%s)", decision.action, decision.reason)
    return decision
