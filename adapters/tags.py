"""The MLflow tag names dae writes and reads: a contract with the UI's "Group by", saved
searches and other tools (docs/tracking.md), named once here."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

# What a run is: experiment, comparison, tuning, trial or scoring (values: the roles below).
ROLE = "dae.role"
ROLE_EXPERIMENT, ROLE_COMPARISON, ROLE_TUNING, ROLE_TRIAL, ROLE_SCORING = (
    "experiment", "comparison", "tuning", "trial", "scoring")
CELL = "dae.cell"  # the comparison cell (Group by -> dae.cell)
WORKER = "dae.worker"  # the machine that trained it
# Interrupted and resumed runs (docs/reliability.md).
KILLED = "dae.killed"
RESUMED_FROM = "dae.resumed_from"
RESUMED_BY = "dae.resumed_by"
RESUMED_FROM_MISSING = "dae.resumed_from_missing"
RESUMED_AT = "dae.resumed_at"
FAILURE = "dae.failure"
FAILURE_DETAIL = "dae.failure_detail"
# Comparisons and tuning: a grid's identity; a tuning's; a trial's study and number.
COMPARISON_KEY = "dae.comparison_key"
TUNING_KEY = "dae.tuning_key"
STUDY = "dae.study"
TRIAL = "dae.trial"
# A comparison's parent run: the cell runs that diverged at their settings ("CELL seed N, ..."),
# left out of its statistics.
DIVERGED = "dae.diverged"
# A trial's MLflow run: FINISHED when complete or pruned, FAILED when it diverged or died.
TRIAL_STATE = "dae.trial_state"
# "false" on a trial run that finished past its cell's budget (workers sharing a study stop
# together): recorded, not scored.
SCORED = "dae.scored"
# A tuning's parent run holds each cell's best parameters (JSON values), which
# `dae compare --tuned RUN_ID` reads: dae.tuned.<cell>.<config field>; the comparison
# names the tuning it used and the parameters it applied the same way.
TUNED = "dae.tuned"
TUNED_FROM = "dae.tuned_from"
# The point of each cell's front a comparison took from a multi-objective tuning (e.g. knee).
TUNED_POINT = "dae.tuned_point"
# A comparison's `--set-cell` overrides, which win over the tuned values: dae.cell_override.<cell>.<field>.
CELL_OVERRIDE = "dae.cell_override"
# The registry: the first version's crowning, a retrain's decision (dae.retrain.<field>),
# and the model a scoring run used.
CHAMPION_NOTE = "dae.champion"
RETRAIN = "dae.retrain"
MODEL_URI = "dae.model_uri"
MODEL_VERSION = "dae.model_version"
# A scoring run's monitoring verdict: ok or drift (dae_core/monitoring.py).
MONITOR_VERDICT = "dae.monitor.verdict"
# The Prefect flow run (and deployment) that made the MLflow run.
FLOW_RUN_ID = "prefect.flow_run_id"
FLOW_RUN_NAME = "prefect.flow_run_name"
DEPLOYMENT_NAME = "prefect.deployment_name"
# MLflow's own: the run description the UI shows (markdown), the code's commit.
DESCRIPTION = "mlflow.note.content"
GIT_COMMIT = "mlflow.source.git.commit"


# Prefect is imported inside the functions: `dae predict` reads the tag names through the
# tracking adapter and loads no Prefect (0.9 s of imports after MLflow on the 2-core machine).
def flow_run_tags() -> dict[str, str]:
    """The tags that tie an MLflow run to the flow run (and deployment) it is part of."""
    from prefect.runtime import deployment, flow_run

    return {FLOW_RUN_ID: str(flow_run.id or ""), FLOW_RUN_NAME: flow_run.name or "",
            DEPLOYMENT_NAME: deployment.name or ""}


def resumed_tags() -> dict[str, str]:
    """An interrupted parent run reopened by this flow run: when, and by which."""
    from prefect.runtime import flow_run

    return {RESUMED_AT: time.strftime("%Y-%m-%dT%H:%M:%S%z"), FLOW_RUN_ID: str(flow_run.id or "")}


def tuned_tags(params: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Each cell's parameters as the tags a tuning (its best) and a comparison (the ones it
    applied) carry: ``dae.tuned.<cell>.<config field>`` = the value as JSON."""
    return {f"{TUNED}.{cell}.{key}": json.dumps(value) for cell, values in params.items()
            for key, value in values.items()}


def tuned_params(tags: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Each cell's parameters read back from a run's ``tuned_tags``."""
    tuned: dict[str, dict[str, Any]] = {}
    for name, value in tags.items():
        if name.startswith(f"{TUNED}."):
            cell, key = name.removeprefix(f"{TUNED}.").split(".", 1)
            tuned.setdefault(cell, {})[key] = json.loads(value)
    return tuned
