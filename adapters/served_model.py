"""The registered model for ``dae predict``: the version a URI names, asked of the registry at
every call, and that version's weights kept on disk.

One picture used to cost importing MLflow, opening its store, downloading the version's
artifacts and loading its torch.export program: about 6 s around a forward pass of
milliseconds. A registered version never changes, so its weights are kept in a folder of
their own, named by the store, the version and the logged model it was made from (a
registry rebuilt from nothing numbers its versions from 1 again), with a sha256 checked at
every load. Which version an alias names is asked every time, so a promotion is followed at
the next call. The registry is asked without MLflow where that is one query: a SQLite
store's two tables or the tracking server's REST API. Anything else (another database, a
schema or answer not understood, an error) returns None, and MLflow's own path runs.
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
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.settings import Settings

if TYPE_CHECKING:
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


def tracking_store(settings: Settings, cwd: Path) -> str | None:
    """The store MLflow would use here, as dae can read it without MLflow: the URI set, or
    MLflow's default SQLite file unless ./mlruns holds a file store (MLflow's default then);
    a SQLite path made absolute. None where only MLflow knows."""
    uri = settings.tracking_uri
    if uri is None:
        if any((entry / "meta.yaml").exists() for entry in (cwd / "mlruns").glob("[0-9]*")):
            return None
        uri = "sqlite:///mlflow.db"
    return store_identity_of(uri, cwd) if uri.startswith(("sqlite:///", "http://", "https://")) else None


def store_identity_of(uri: str, cwd: Path) -> str:
    """A tracking store as one string: the URI, with a SQLite file's path made absolute
    (``sqlite:///mlflow.db`` means a different file in each working directory). The weights
    kept by MLflow's path and looked up without it meet under this name."""
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{(cwd / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def look_up(settings: Settings, store: str, reference: RegistryReference) -> ModelVersion | None:
    """The version ``reference`` names now, asked of ``store`` without MLflow; None where that
    is not possible or fails (MLflow's path then answers, with its own errors)."""
    try:
        if store.startswith("sqlite:///"):
            return _from_sqlite(Path(store.removeprefix("sqlite:///")), reference)
        return _from_server(settings, store, reference)
    except (OSError, sqlite3.Error, ValueError, KeyError, TypeError) as error:
        log.debug("registry look-up without MLflow failed (%s): MLflow's path runs", error)
        return None


def pinned_with_mlflow(model_uri: str) -> tuple[ModelVersion | None, str]:
    """The version a registry URI names now, asked through MLflow's client (its errors
    raised), and the URI of exactly that version (an alias may move before it is loaded);
    any other URI as it is, with no version."""
    from adapters import tracking

    reference = RegistryReference.parse(model_uri)
    if reference is None:
        return None, model_uri
    client = tracking.client()
    found = (client.get_model_version_by_alias(reference.name, reference.alias) if reference.alias is not None
             else client.get_model_version(reference.name, str(reference.version)))
    version = ModelVersion(reference.name, str(found.version), found.source, found.run_id or "")
    return version, f"models:/{version.name}/{version.version}"


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
