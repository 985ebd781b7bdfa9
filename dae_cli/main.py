"""The ``dae`` command: ``run``, ``compare``, ``tune``, ``predict``, ``serve``, ``champion``, ``setup``,
``users``, ``bench``, each a module of ``dae_cli/commands/``.

``run``, ``compare`` and ``tune`` run the Prefect flows in this process: with no
``PREFECT_API_URL`` Prefect starts a temporary local server and MLflow writes to
``sqlite:///mlflow.db``; with both servers configured the same command reports to them.
``predict`` answers from a registered model without Prefect, ``serve`` serves it over HTTP,
``champion`` shows or moves the served version; ``setup`` and ``users`` configure the
team stack's servers; ``bench`` times the training. Every failure a person can act on is a
``DaeError``: one line of cause, one of fix, an exit code.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import sys
import traceback
from collections.abc import Sequence

from adapters.settings import Settings
from dae_cli.arguments import Parser
from dae_cli.command import Command, Session
from dae_cli.commands import bench, champion, compare, predict, run, serve, setup, tune, users
from dae_core.errors import EXIT_SERVER, DaeError

COMMANDS: tuple[Command, ...] = tuple(module.COMMAND for module in (run, compare, tune, predict, serve, champion,
                                                                         setup, users, bench))


def release() -> str:
    """The installed release of dae-pipeline (pyproject.toml's version; CHANGELOG.md)."""
    from importlib.metadata import version

    return version("dae-pipeline")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dae", description="Denoising-autoencoder MNIST pipeline")
    parser.add_argument("--version", action="version", version=f"dae-pipeline {release()}")
    subcommands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_arguments(subcommands.add_parser(command.name, help=command.help))
    return parser


class PrefectRefused(DaeError):
    """A Prefect server refused the request for want of the right auth string."""

    exit_code = EXIT_SERVER
    fix = ("set PREFECT_API_AUTH_STRING to the server's auth string (PREFECT_API_AUTH_STRING of the team "
           "stack's .env)")


def _prefect_refusal(error: Exception) -> PrefectRefused | None:
    """The one library error `dae` explains where it surfaces: Prefect's client raises httpx's
    401/403 from deep inside Prefect, where no code of ours can name the cause."""
    if "httpx" not in sys.modules:  # nothing talked to a server: no httpx to import (and wait for)
        return None
    import httpx

    if isinstance(error, httpx.HTTPStatusError) and error.response.status_code in (401, 403):
        return PrefectRefused(f"the Prefect server refused the request ({error.request.url}: "
                              f"HTTP {error.response.status_code})")
    return None


def main(argv: Sequence[str] | None = None, restore_terminal: bool = True) -> int:
    """``restore_terminal=False``: Prefect's console stays as the command set it after the
    command returns (the console script, whose process ends there). Expected failures end
    in the cause and the fix, one line each at most (and the traceback with ``--verbose``)."""
    verbose = "--verbose" in (sys.argv[1:] if argv is None else argv)  # for a refusal of the command line too
    try:
        args = build_parser().parse_args(argv)
        session = Session(verbose=verbose, restore_terminal=restore_terminal, settings=Settings.from_env())
        command = next(command for command in COMMANDS if command.name == args.command)
        return command.execute(args, session)
    except Exception as error:
        explained = error if isinstance(error, DaeError) else _prefect_refusal(error)
        if explained is None:
            raise
        if verbose:
            traceback.print_exc()
        print(f"dae: {explained}", file=sys.stderr)
        return explained.exit_code


def entrypoint() -> None:
    """The ``dae`` console script.

    Registered first, ``gc.freeze`` runs after every other exit handler (Prefect's log
    and event workers have drained, its temporary server has stopped): the interpreter's
    final garbage collections then skip the millions of objects torch, Prefect and
    MLflow leave, about 2.2 s -> 0.2 s of teardown (docs/benchmarks.md, section 3).
    """
    atexit.register(gc.freeze)
    sys.exit(main(restore_terminal=False))


if __name__ == "__main__":
    entrypoint()
