"""Deployment runs sent to the work pool and awaited: how ``dae compare --fan-out`` and
``dae tune --fan-out`` spread their work over the pool's workers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from prefect import get_client, task
from prefect.client.schemas.objects import State
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from dae_core.config import ConfigError

POLL_S = 2.0


@task(name="dispatch-run", task_run_name="dispatch {label}")
def dispatch(deployment_name: str, parameters: dict[str, Any], label: str) -> str:
    """Start one run of ``deployment_name`` (as a subflow of this flow run, so the UI shows
    it under its dispatcher) that any worker of its pool may pick up; returns its id."""
    try:
        dispatched = run_deployment(deployment_name, parameters=parameters, timeout=0, as_subflow=True)
    except ObjectNotFound:
        raise ConfigError(f"--fan-out {deployment_name}: no such deployment on this Prefect server",
                          "run `prefect deploy --all` there, or name one that `prefect deployment ls` lists") from None
    return str(dispatched.id)


def wait_for_runs(flow_run_ids: list[str], timeout_s: int,
                  while_waiting: Callable[[], None] | None = None) -> dict[str, State]:
    """The final state of each flow run, once all have one; ``while_waiting`` is called
    between polls (e.g. to report progress). Raises ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    final: dict[str, State] = {}
    with get_client(sync_client=True) as client:
        while True:
            for flow_run_id in flow_run_ids:
                if flow_run_id not in final:
                    state = client.read_flow_run(uuid.UUID(flow_run_id)).state
                    if state is not None and state.is_final():
                        final[flow_run_id] = state
            if while_waiting is not None:
                while_waiting()
            if len(final) == len(flow_run_ids):
                return final
            if time.monotonic() > deadline:
                waiting = [i for i in flow_run_ids if i not in final]
                raise TimeoutError(f"flow runs {', '.join(waiting)} not done after {timeout_s} s")
            time.sleep(POLL_S)
