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

from adapters.settings import Settings
from dae_cli.command import Command, Session
from dae_core.errors import EXIT_DATA
from dae_core.summary import CHAMPION_URI


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
    from adapters.model_registry import load_probabilities
    from dae_cli.terminal import mlflow_warnings_only
    from dae_core.scoring import joined, read_files, rounded

    read, errors = read_files(files)
    if not read:
        return [], errors
    digits = joined(read)
    pixels = digits.pixels.reshape(len(digits.pixels), -1).astype(np.float32)
    model = load_probabilities(model_uri, settings, Path.cwd(), lambda: mlflow_warnings_only(verbose))
    probabilities = rounded(model(pixels))
    return [Prediction(name, int(row.argmax()), float(row.max()), row.tolist())
            for name, row in zip(digits.names, probabilities, strict=True)], errors


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
