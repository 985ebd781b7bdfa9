"""Links into the MLflow UI, and the prose of the experiments dae creates."""

from __future__ import annotations

from adapters.mlflow_client import client
from adapters.mlflow_store import tracking_uri
from dae_core.summary import REGISTERED_MODEL, SCORING_EXPERIMENT

# Without it MLflow 3.17's UI opens an experiment on its GenAI overview (traces, token
# usage); with it, on the training runs table.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

# MLflow 3.17's UI follows the link's workflow type: without it, a browser that never picked
# "Model training" lands on the GenAI overview whatever the experiment's kind tag says.
_UI_WORKFLOW = "workflowType=machine_learning"


def experiment_link(server: str, experiment: str) -> str:
    """The MLflow UI page of an experiment's runs table."""
    return f"{server.rstrip('/')}/#/experiments/{experiment}?{_UI_WORKFLOW}"


def run_link(server: str, experiment: str, run_id: str, page: str = "") -> str:
    """The MLflow UI page of a run (``page``: e.g. ``artifacts/figures/x.png``)."""
    path = f"runs/{run_id}/{page}".rstrip("/")
    return f"{server.rstrip('/')}/#/experiments/{experiment}/{path}?{_UI_WORKFLOW}"


def experiment_description(name: str) -> str:
    """What the experiment page says of an experiment dae creates."""
    if name == SCORING_EXPERIMENT:
        return (f"**{name}**: batch scoring by the `dae-score` flow. Each run scored one batch with one registered "
                f"version of `{REGISTERED_MODEL}` (tags `dae.model_uri`, `dae.model_version`): its predictions CSV, "
                "and its accuracy where the batch had labels.")
    return (f"**{name}**: training runs of `dae` (`dae run`, `dae compare`, `dae tune`, the `dae-experiment` and "
            "`dae-retrain` deployments): the denoising autoencoder pretrained on MNIST, then the classifier on its "
            "encoder. Each run's description says what ran (preset, changed fields, its Prefect flow run); a "
            "comparison or a tuning is a parent run over its cells or trials: **Group by** `dae.cell` in the runs "
            "table draws one mean curve per cell. Registered versions: the model registry's "
            f"`{REGISTERED_MODEL}`.")


def run_reference(run_id: str) -> str:
    """A run as markdown: a link into the MLflow UI where the store is a server, else its id
    and the command that opens the store's UI."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        experiment = client().get_run(run_id).info.experiment_id
        return f"[{run_id}]({run_link(uri, experiment, run_id)})"
    return f"`{run_id}` in `{uri}` (open with `mlflow ui --backend-store-uri {uri}`)"
