"""The automations that watch deployed runs, created as code by ``dae setup``.

- Unresponsive flow runs: deployed runs send a heartbeat every 30 s
  (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` in prefect.yaml); a run that misses them for
  ``zombie_after_s`` (its machine died, SIGKILL) is marked Crashed. Prefect's own recipe
  ("detect zombie flows"); a Prefect server has nothing built in for it.
- MLflow runs of dead flow runs: a dae flow run marked Crashed or Cancelled starts
  ``dae-reconcile/crashed-runs``, which ends its MLflow run FAILED with the reason.
- Notification: a retrain that ends Failed or Crashed posts to a webhook, through a
  Prefect notification block (only when a webhook URL is given).
- Drift: a scored batch that drifts from its model's reference (the ``dae.monitor.drift``
  event of ``dae-score``) starts ``dae-retrain/nightly`` and, where a webhook is set up,
  posts to it (``dae setup --no-retrain-on-drift`` removes it).

Each automation is replaced by name, so ``dae setup`` can be run again after any change.
"""

from __future__ import annotations

from datetime import timedelta

from prefect import get_client
from prefect.automations import Automation
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, RunDeployment, SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from dae_core.summary import REGISTERED_MODEL
from tasks.scoring import DRIFT_EVENT

ZOMBIE = "dae: crash unresponsive flow runs"
RECONCILE = "dae: end the MLflow runs of dead flow runs"
NOTIFY = "dae: notify when a retrain fails or crashes"
RECONCILE_DEPLOYMENT = "dae-reconcile/crashed-runs"
NOTIFY_BLOCK = "dae-notify"
RETRAIN_ON_DRIFT = "dae: retrain when a scored batch drifts"
RETRAIN_DEPLOYMENT = "dae-retrain/nightly"
WATCHED_FLOWS = ["dae-experiment", "dae-retrain", "dae-compare", "dae-tune"]
FINAL_EVENTS = {f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")}
FLOW_RUNS = ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]})


def zombie_automation(zombie_after_s: int) -> Automation:
    return Automation(
        name=ZOMBIE,
        description=f"A flow run with no heartbeat for {zombie_after_s} s is marked Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
            match=FLOW_RUNS,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=zombie_after_s),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {zombie_after_s} s: its machine or process died")],
    )


def _flow_run_ends(states: list[str], flows: list[str]) -> EventTrigger:
    """Fires once for each flow run of ``flows`` that enters one of ``states``."""
    return EventTrigger(
        expect={f"prefect.flow-run.{state}" for state in states},
        match=FLOW_RUNS,
        match_related=ResourceSpecification({"prefect.resource.role": "flow", "prefect.resource.name": flows}),
        posture=Posture.Reactive,
        threshold=1,
    )


def reconcile_automation(deployment_id) -> Automation:
    return Automation(
        name=RECONCILE,
        description="Ends FAILED the MLflow runs of dae flow runs that were marked Crashed or Cancelled.",
        trigger=_flow_run_ends(["Crashed", "Cancelled"], WATCHED_FLOWS),
        actions=[RunDeployment(source="selected", deployment_id=deployment_id, parameters={})],
    )


def notify_automation(block_document_id) -> Automation:
    return Automation(
        name=NOTIFY,
        description="Posts to the team's webhook when a dae-retrain flow run ends Failed or Crashed.",
        trigger=_flow_run_ends(["Failed", "Crashed"], ["dae-retrain"]),
        actions=[SendNotification(
            block_document_id=block_document_id,
            subject="dae: {{ flow_run.name }} ended {{ flow_run.state.name }}",
            body="Flow run {{ flow_run.name }} of {{ flow.name }} ended {{ flow_run.state.name }}: "
                 "{{ flow_run.state.message }}")],
    )


def drift_automation(retrain_deployment_id, block_document_id) -> Automation:
    """``block_document_id``: the webhook's block, or None for no notice."""
    actions = [RunDeployment(source="selected", deployment_id=retrain_deployment_id, parameters={})]
    if block_document_id is not None:
        actions.append(SendNotification(
            block_document_id=block_document_id,
            subject="dae: a scored batch drifts from model version {{ event.payload.model_version }}",
            body="Scoring run {{ event.payload.mlflow_run_id }} (checks over threshold: "
                 "{{ event.payload.checks | join(', ') }}): a retrain has been started."))
    return Automation(
        name=RETRAIN_ON_DRIFT,
        description="A dae-score batch that drifts from its model's reference starts dae-retrain/nightly.",
        trigger=EventTrigger(
            expect={DRIFT_EVENT},
            match=ResourceSpecification({"prefect.resource.id": f"mlflow.registered-model.{REGISTERED_MODEL}"}),
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=actions,
    )


def _delete(name: str) -> None:
    with get_client(sync_client=True) as client:
        for existing in client.read_automations_by_name(name):
            client.delete_automation(existing.id)


def _replace(automation: Automation) -> None:
    _delete(automation.name)
    automation.create()


def _saved_block_id():
    """The webhook block an earlier ``dae setup`` saved, or None."""
    try:
        return CustomWebhookNotificationBlock.load(NOTIFY_BLOCK)._block_document_id
    except ValueError:  # Prefect's "Unable to find block document named ..."
        return None


def set_up_automations(zombie_after_s: int, webhook_url: str | None, retrain_on_drift: bool = True) -> list[str]:
    """Create (or replace) the automations; returns the names of those now in place (the
    notification one is kept as it was when no webhook URL is given). Needs a Prefect
    server with the project's deployments (``prefect deploy --all``)."""
    with get_client(sync_client=True) as client:
        reconcile = client.read_deployment_by_name(RECONCILE_DEPLOYMENT)
        retrain = client.read_deployment_by_name(RETRAIN_DEPLOYMENT)
        notifying = bool(client.read_automations_by_name(NOTIFY))
    automations = [zombie_automation(zombie_after_s), reconcile_automation(reconcile.id)]
    kept = [NOTIFY] if notifying and not webhook_url else []  # set up before, with its webhook
    block_id = _saved_block_id() if notifying else None
    if webhook_url:
        # The URL (a Slack or Teams hook embeds its token) is kept as a block secret.
        block = CustomWebhookNotificationBlock(
            name="dae", url="{{webhook_url}}", json_data={"text": "{{subject}}\n{{body}}"},
            secrets={"webhook_url": webhook_url})
        block_id = block.save(NOTIFY_BLOCK, overwrite=True)
        automations.append(notify_automation(block_id))
    if retrain_on_drift:
        automations.append(drift_automation(retrain.id, block_id))
    else:
        _delete(RETRAIN_ON_DRIFT)
    for automation in automations:
        _replace(automation)
    return [automation.name for automation in automations] + kept
