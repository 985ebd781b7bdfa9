"""``dae predict``: the registered model on pictures people have.

No Prefect here: a prediction is one model load and one forward pass, and needs no flow
run (batch scoring with a record of its own is the ``dae-score`` flow).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from adapters import served_model
from adapters.settings import Settings
from dae_cli.command import Command, Session
from dae_core.errors import EXIT_DATA, EXIT_SERVER, DaeError
from dae_core.summary import CHAMPION_URI


class ModelUnavailable(DaeError):
    """The model URI names nothing the tracking store has."""

    exit_code = EXIT_SERVER
    fix = ("run `dae run` first (its first registered model becomes champion), point MLFLOW_TRACKING_URI at the "
           "store that has it, or pass --model")

    @classmethod
    def from_mlflow(cls, model_uri: str, tracking_uri: str, error: Exception) -> ModelUnavailable:
        return cls(f"no model at {model_uri} in {tracking_uri} ({str(error).splitlines()[0]})")


@dataclass(frozen=True)
class Prediction:
    file: str
    digit: int
    probability: float
    probabilities: list[float]


def predict_files(files: list[Path], model_uri: str, settings: Settings,
                  verbose: bool = False) -> tuple[list[Prediction], list[str]]:
    """Predictions for every digit of every readable file, and one error line per file
    that could not be read (the others are still scored). MLflow's INFO lines only if
    ``verbose``."""
    from dae_core.scoring import joined, read_files, rounded

    read, errors = read_files(files)
    if not read:
        return [], errors
    digits = joined(read)
    pixels = digits.pixels.reshape(len(digits.pixels), -1).astype(np.float32)
    probabilities = rounded(_probabilities(model_uri, pixels, settings, verbose))
    return [Prediction(name, int(row.argmax()), float(row.max()), row.tolist())
            for name, row in zip(digits.names, probabilities, strict=True)], errors


def _probabilities(model_uri: str, pixels: np.ndarray, settings: Settings, verbose: bool) -> np.ndarray:
    """(N, 784) -> (N, 10) per-class probabilities from the model at ``model_uri``: the
    registered version's kept weights where the registry can be asked without MLflow and
    they are kept, else MLflow's own load (which keeps them for the next call)."""
    cache = served_model.WeightCache(settings.model_cache_dir)
    store = served_model.tracking_store(settings, Path.cwd())
    reference = served_model.RegistryReference.parse(model_uri)
    if store is not None and reference is not None:
        version = served_model.look_up(settings, store, reference)
        served = cache.load(store, version) if version is not None else None
        if served is not None:
            import torch

            with torch.no_grad():
                return served(torch.from_numpy(pixels)).numpy()
    from dae_cli.terminal import mlflow_warnings_only

    with mlflow_warnings_only(verbose):
        return _probabilities_through_mlflow(model_uri, pixels, cache)


def _probabilities_through_mlflow(model_uri: str, pixels: np.ndarray, cache: served_model.WeightCache) -> np.ndarray:
    import mlflow

    from adapters import tracking

    tracking.check_store(create=False)
    try:
        # The version just resolved, not the alias again: what is kept is what answered.
        version, pinned_uri = served_model.pinned_with_mlflow(model_uri)
        model = tracking.load_serving_model(pinned_uri)
    except mlflow.exceptions.MlflowException as error:
        raise ModelUnavailable.from_mlflow(model_uri, tracking.tracking_uri(), error) from None
    if version is not None:
        cache.save(tracking.store_identity(), version, model.get_raw_model().state_dict())
    return np.asarray(model.predict(pixels))


def print_predictions(predictions: list[Prediction], as_json: bool) -> None:
    if as_json:
        print(json.dumps([asdict(prediction) for prediction in predictions], indent=2))
        return
    width = max((len(prediction.file) for prediction in predictions), default=0)
    for prediction in predictions:
        print(f"{prediction.file:<{width}}  {prediction.digit}  ({100 * prediction.probability:.1f}%)")


def report_errors(errors: list[str]) -> None:
    for error in errors:
        print(f"dae: cannot score {error}", file=sys.stderr)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE",
                        help="PNG, JPEG, ... (any size; light or dark paper) or an IDX file of 28x28 images")
    parser.add_argument("--model", default=CHAMPION_URI,
                        help=f"model URI (default {CHAMPION_URI}; e.g. models:/dae-mnist-classifier/3)")
    parser.add_argument("--json", action="store_true",
                        help='print [{"file", "digit", "probability", "probabilities"}, ...]')
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")


def _execute(args: argparse.Namespace, session: Session) -> int:
    predictions, errors = predict_files(args.files, args.model, session.settings, session.verbose)
    print_predictions(predictions, args.json)
    report_errors(errors)
    return EXIT_DATA if errors else 0


COMMAND = Command("predict", "the registered model's digit for each picture or IDX image", _arguments, _execute)
