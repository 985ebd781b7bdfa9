"""``dae bench``: the lecture's data path against this project's, timed side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dae_cli.arguments import check_writable_file, whole_number
from dae_cli.command import Command, Session, write_json


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="folder holding MNIST/raw/; env DAE_DATA_DIR; default ./data")
    parser.add_argument("--epochs", type=whole_number(1, 100), default=2, help="timed epochs per path, 1..100")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", type=Path, help="write the measurements here")


def _execute(args: argparse.Namespace, session: Session) -> int:
    from dae_core.bench import run_benchmark

    if args.json is not None:
        check_writable_file(args.json, "--json")
    result = run_benchmark(Path(args.data_dir or session.settings.data_dir), epochs=args.epochs, dtype=args.dtype,
                           device=args.device)
    write_json(args.json, result)
    print(json.dumps(result, indent=2))
    return 0


COMMAND = Command("bench", "time the lecture's data path against this project's", _arguments, _execute)
