"""The registered model: exported into MLflow, which version a model URI names (one
resolver), and loaded, from the weights kept on disk where it can be, else through MLflow.

One picture used to cost importing MLflow, opening its store, downloading the version's
artifacts and loading its torch.export program: about 6 s around a forward pass of
milliseconds. A registered version never changes, so its weights are kept on disk
(``WeightCache``, below). Which version an alias names is asked every time, so a
promotion is followed at the next call. The registry is asked without MLflow where that is
one query: a SQLite store's two tables or the tracking server's REST API. Anything else
(another database, a schema or answer not understood, an error) returns None, and MLflow's
own path runs. MLflow is imported only on that path.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.mlflow_client import client
from adapters.mlflow_store import check_store, store_identity, tracking_store, tracking_uri
from adapters.settings import Settings
from dae_core.errors import EXIT_SERVER, DaeError
from dae_core.summary import REGISTERED_MODEL

if TYPE_CHECKING:
    import numpy as np
    import torch

    from dae_core.model import ClassProbabilities


log = logging.getLogger(__name__)

_WEIGHTS, _CARD = "weights.pt", "version.json"


@dataclass(frozen=True)
class RegistryReference:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""

    name: str
    alias: str | None
    version: str | None

    @classmethod
    def parse(cls, model_uri: str) -> RegistryReference | None:
        if not model_uri.startswith("models:/"):
            return None
        path = model_uri.removeprefix("models:/")
        if "@" in path:
            name, _, alias = path.partition("@")
            return cls(name, alias, None) if name and alias and "/" not in name else None
        name, _, version = path.partition("/")
        return cls(name, None, version) if name and version.isdigit() else None


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    source: str  # the logged model it was registered from: models:/m-...
    run_id: str

    @property
    def uri(self) -> str:
        """Exactly this version, wherever its aliases move."""
        return f"models:/{self.name}/{self.version}"


class ModelUnavailable(DaeError):
    """The model URI names nothing the tracking store has."""

    exit_code = EXIT_SERVER
    fix = ("run `dae run` first (its first registered model becomes champion), point MLFLOW_TRACKING_URI at the "
           "store that has it, or pass --model")

    @classmethod
    def from_mlflow(cls, model_uri: str, error: Exception) -> ModelUnavailable:
        return cls(f"no model at {model_uri} in {tracking_uri()} ({str(error).splitlines()[0]})")


def resolve(model_uri: str) -> ModelVersion | None:
    """The version a registry URI (``models:/NAME@ALIAS``, ``models:/NAME/N``) names now,
    asked of the registry through MLflow (its errors raised); None for any other URI. Load
    ``version.uri``, not ``model_uri`` again: an alias may move in between."""
    reference = RegistryReference.parse(model_uri)
    if reference is None:
        return None
    registry = client()
    found = (registry.get_model_version_by_alias(reference.name, reference.alias) if reference.alias is not None
             else registry.get_model_version(reference.name, str(reference.version)))
    return ModelVersion(reference.name, str(found.version), found.source, found.run_id or "")


def alias_version(alias: str) -> str | None:
    """The version of ``dae-mnist-classifier`` that ``alias`` names, or None where it names none."""
    from mlflow.exceptions import MlflowException

    try:
        version = resolve(f"models:/{REGISTERED_MODEL}@{alias}")
    except MlflowException:
        return None
    return version.version if version is not None else None


Probabilities = Callable[["np.ndarray"], "np.ndarray"]


def load_probabilities(model_uri: str, settings: Settings, cwd: Path,
                       quiet: Callable[[], contextlib.AbstractContextManager[None]]) -> Probabilities:
    """``(N, 784) float32 -> (N, 10)`` per-class probabilities of the model at ``model_uri``:
    the version the registry names now, from its kept weights when the registry can be asked
    without MLflow and they are kept, else through MLflow (which keeps them for the next
    call); MLflow's path runs inside ``quiet()``. Raises ``ModelUnavailable``."""
    cache = WeightCache(settings.model_cache_dir)
    store, reference = tracking_store(settings, cwd), RegistryReference.parse(model_uri)
    if store is not None and reference is not None:
        version = _look_up_without_mlflow(settings, store, reference)
        kept = cache.load(store, version) if version is not None else None
        if kept is not None:
            return _forward(kept)
    with quiet():
        return _load_through_mlflow(model_uri, cache)


def _forward(model: ClassProbabilities) -> Probabilities:
    import torch

    def probabilities(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(pixels)).numpy()

    return probabilities


def _load_through_mlflow(model_uri: str, cache: WeightCache) -> Probabilities:
    import numpy as np
    from mlflow.exceptions import MlflowException

    check_store(create=False)
    try:
        version = resolve(model_uri)
        model = load_serving_model(version.uri if version is not None else model_uri)
    except MlflowException as error:
        raise ModelUnavailable.from_mlflow(model_uri, error) from None
    if version is not None:
        cache.save(store_identity(), version, model.get_raw_model().state_dict())
    return lambda pixels: np.asarray(model.predict(pixels))


def download(model_uri: str, verbose: bool) -> tuple[ModelVersion | None, Path]:
    """The model at ``model_uri`` (the version the registry names now) in a new folder of its
    own, for a server to load; MLflow's download bars only if ``verbose``. Raises
    ``ModelUnavailable``, leaving no folder behind."""
    import mlflow

    check_store(create=False)
    folder = None
    try:
        version = resolve(model_uri)
        folder = tempfile.mkdtemp(prefix=f"dae-serve-v{version.version}-" if version else "dae-serve-")
        # MLflow draws a progress bar per download on stderr; a few small files need none.
        with contextlib.nullcontext() if verbose else contextlib.redirect_stderr(io.StringIO()):
            local = mlflow.artifacts.download_artifacts(artifact_uri=version.uri if version else model_uri,
                                                        dst_path=folder)
    except mlflow.exceptions.MlflowException as error:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise ModelUnavailable.from_mlflow(model_uri, error) from None
    return version, Path(local).resolve()


def _look_up_without_mlflow(settings: Settings, store: str, reference: RegistryReference) -> ModelVersion | None:
    """The version ``reference`` names now, asked of ``store`` without MLflow; None where that
    is not possible or fails (MLflow's path then answers, with its own errors)."""
    try:
        if store.startswith("sqlite:///"):
            return _from_sqlite(Path(store.removeprefix("sqlite:///")), reference)
        return _from_server(settings, store, reference)
    except (OSError, sqlite3.Error, ValueError, KeyError, TypeError) as error:
        log.debug("registry look-up without MLflow failed (%s): MLflow's path runs", error)
        return None


def _from_sqlite(database: Path, reference: RegistryReference) -> ModelVersion | None:
    if not database.is_file():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as connection:
        version = reference.version
        if reference.alias is not None:
            rows = connection.execute("SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?",
                                      (reference.name, reference.alias)).fetchall()
            if len(rows) != 1:  # none (MLflow says so), or one per workspace (MLflow picks)
                return None
            version = str(rows[0][0])
        rows = connection.execute(
            "SELECT source, run_id FROM model_versions WHERE name = ? AND version = ? AND status = 'READY' "
            "AND current_stage != 'Deleted_Internal'", (reference.name, int(version or 0))).fetchall()
    if len(rows) != 1:
        return None
    source, run_id = rows[0]
    return ModelVersion(reference.name, str(version), str(source), str(run_id))


def _from_server(settings: Settings, store: str, reference: RegistryReference) -> ModelVersion | None:
    if reference.alias is not None:
        path, query = "registered-models/alias", {"name": reference.name, "alias": reference.alias}
    else:
        path, query = "model-versions/get", {"name": reference.name, "version": reference.version}
    request = urllib.request.Request(
        f"{store.rstrip('/')}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}", headers=_auth(settings))
    with urllib.request.urlopen(request, timeout=10) as response:
        found = json.load(response)["model_version"]
    if found.get("status", "READY") != "READY":
        return None
    return ModelVersion(reference.name, str(found["version"]), found["source"], found.get("run_id", ""))


def _auth(settings: Settings) -> dict[str, str]:
    """The headers MLflow's client sends for these settings."""
    if settings.tracking_token is not None:
        return {"Authorization": f"Bearer {settings.tracking_token.get_secret_value()}"}
    if settings.tracking_username and settings.tracking_password is not None:
        pair = f"{settings.tracking_username}:{settings.tracking_password.get_secret_value()}"
        return {"Authorization": f"Basic {base64.b64encode(pair.encode()).decode()}"}
    return {}


def set_alias(alias: str, version: str) -> None:
    client().set_registered_model_alias(REGISTERED_MODEL, alias, version)


def model_version_of_run(run_id: str) -> str | None:
    """The registered version that a run logged, if any."""
    versions = client().search_model_versions(f"name='{REGISTERED_MODEL}' and run_id='{run_id}'")
    return str(versions[0].version) if versions else None


# torch.export keeps global tracing state: two exports on different threads (cells of an
# in-process comparison) corrupt each other. Exports in one process take turns.
_EXPORT_LOCK = threading.Lock()


@dataclass(frozen=True)
class LoggedClassifier:
    uri: str
    version: str | None  # the registered version, when it was registered


def log_classifier(run_id: str, model, register: bool) -> LoggedClassifier:
    """Log the classifier as a pt2 (torch.export) model with signature and input example,
    and register it. What is logged answers per-class probabilities (``ClassProbabilities``):
    input (N, 784) float32 pixels in [0, 1], output (N, 10) float32 rows summing to 1. pt2
    holds no pickles, so loading it never unpickles anything."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from dae_core.model import ClassProbabilities

    served = ClassProbabilities(model.to("cpu", torch.float32)).eval()
    # Two rows: torch.export would specialise a batch of one and refuse other batch sizes.
    example = np.zeros((2, 784), dtype=np.float32)
    with torch.no_grad():
        output = served(torch.from_numpy(example)).numpy()
    run = client().get_run(run_id)
    with _EXPORT_LOCK:
        # Created first in the run's own experiment: left to itself, log_model files a model
        # logged by run id under the thread's active experiment, i.e. "Default" in a task
        # thread, where a worker of the authenticated stack may not write.
        logged_model = mlflow.initialize_logged_model(
            name="classifier", source_run_id=run_id, experiment_id=run.info.experiment_id,
            params={key: str(value) for key, value in run.data.params.items()},
        )
        info = mlflow.pytorch.log_model(
            served, name="classifier", input_example=example, signature=infer_signature(example, output),
            model_id=logged_model.model_id,
            serialization_format="pt2",
            # Stated, not inferred: inference re-imports the model in a subprocess (~10 s).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            registered_model_name=REGISTERED_MODEL if register else None, run_id=run_id,
        )
    version = info.registered_model_version
    return LoggedClassifier(info.model_uri, str(version) if version is not None else None)


# The serving device, pinned: MLflow's loader picks CUDA wherever a GPU is present, and a
# pt2 program exported on the CPU refuses to load there. The classifier is 0.3 M weights:
# on a CPU a batch of 10,000 images takes milliseconds.
SERVING_DEVICE = "cpu"


def load_serving_model(model_uri: str):
    """The registered model as MLflow serves it (pyfunc), on ``SERVING_DEVICE``."""
    import mlflow

    return mlflow.pyfunc.load_model(model_uri, model_config={"device": SERVING_DEVICE})


def load_registered(version: str):
    """Load one registered version. The pt2 format is a torch.export program: loading it
    runs no unpickler, so a tampered artifact cannot execute code."""
    import mlflow

    return mlflow.pytorch.load_model(f"models:/{REGISTERED_MODEL}/{version}")


class WeightCache:
    """Each registered version's weights in ``root/<key>/``: ``weights.pt`` (tensors only,
    loaded with ``weights_only``: nothing unpickled runs) and ``version.json`` (what it is and
    the weights' sha256). Written to a scratch folder and renamed into place whole."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, store: str, version: ModelVersion) -> Path:
        key = "|".join((store, version.name, version.version, version.source, version.run_id))
        return self.root / f"{version.name}-v{version.version}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def load(self, store: str, version: ModelVersion) -> ClassProbabilities | None:
        import torch

        from dae_core.model import probabilities_from_weights

        folder = self.folder(store, version)
        try:
            card = json.loads((folder / _CARD).read_text())
            blob = (folder / _WEIGHTS).read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(card, dict) or card.get("weights_sha256") != hashlib.sha256(blob).hexdigest():
            log.warning("%s: weights changed on disk; loading version %s from the registry again", folder,
                        version.version)
            return None
        try:
            # The bytes just checked, not the file again: what loads is what was verified.
            weights = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            return probabilities_from_weights(weights)
        # Bytes that match their card yet are no classifier's weights (a card rewritten by
        # hand, another program's file): torch's unpickler and load_state_dict raise many types.
        except Exception as error:
            log.warning("%s: not version %s's weights (%s); loading it from the registry again", folder,
                        version.version, type(error).__name__)
            return None

    def save(self, store: str, version: ModelVersion, weights: dict[str, torch.Tensor]) -> None:
        """Keep ``weights`` for ``version``; a failure to write only costs the next call time."""
        import torch

        folder = self.folder(store, version)
        scratch: Path | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(dir=self.root, prefix=".new-"))
            torch.save({name: tensor.detach().cpu().contiguous() for name, tensor in weights.items()},
                       scratch / _WEIGHTS)
            card: dict[str, Any] = {**asdict(version), "store": store,
                                    "weights_sha256": hashlib.sha256((scratch / _WEIGHTS).read_bytes()).hexdigest()}
            (scratch / _CARD).write_text(json.dumps(card, indent=2) + "\n")
            if folder.exists():  # an entry that ``load`` refused
                shutil.rmtree(folder)
            os.replace(scratch, folder)
        except OSError as error:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            if not (folder / _CARD).exists():  # else another process kept it first
                log.warning("could not keep version %s's weights in %s (%s)", version.version, self.root, error)
