"""``dae champion``: the served model and the history of its moves; ``--set`` moves it by hand
(a rollback, or a manual promotion), recorded like the retrain's moves."""

from __future__ import annotations

import argparse

from dae_cli.command import Command, Session
from dae_core.config import ConfigError
from dae_core.summary import REGISTERED_MODEL


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="version", metavar="VERSION",
                        help=f"point @champion at this version of {REGISTERED_MODEL} (needs --reason, and EDIT on "
                             "the registered model where MLflow checks permissions)")
    parser.add_argument("--reason", metavar="TEXT", help="why, recorded with the move")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")


def _execute(args: argparse.Namespace, session: Session) -> int:
    from adapters import champion
    from adapters.mlflow_store import check_store
    from dae_cli.terminal import mlflow_warnings_only

    if args.version is not None:  # every value checked before the store is even opened
        if args.reason is None:
            raise ConfigError("--set needs --reason TEXT: every move of @champion says why",
                              f'dae champion --set {args.version} --reason "rollback: version 7 misreads sevens"')
        version, reason = champion.version_named(args.version), champion.checked_reason(args.reason)
    with mlflow_warnings_only(session.verbose):
        check_store(create=False)
        if args.version is not None:
            champion.checked_version(version)
            by = session.settings.user
            move = champion.move_champion(version, reason, by, decision=("manual", f"**manual** by {by}: {reason}"))
            if move is None:
                print(f"@champion is already version {version}: nothing moved")
                return 0
            print(f"@champion: version {move.previous or '(none)'} -> version {move.version}, by {move.by}: "
                  f"{move.reason}")
            print("dae predict and dae-score use it from now on; the stack's model server loads @champion when "
                  "it starts: `docker compose restart model-server` serves it")
            return 0
        _print_champion()
    return 0


def _print_champion() -> None:
    from adapters import champion

    card = champion.champion_card()
    if card is None:
        print(f"{REGISTERED_MODEL} has no champion yet: `dae run` registers and crowns the first version")
        return
    scores = ", ".join(f"{name.replace('_', ' ')} {value}%" for name, value in card.scores.items())
    print(f"@champion: version {card.version}" + (f" ({scores})" if scores else "") + f", from run {card.run_id}")
    moves = champion.champion_history()
    if not moves:
        print("no recorded moves (it was set before dae recorded them)")
        return
    print("moves, oldest first:")
    for move in moves:
        print(f"  {move.at}  {move.previous or '-':>3} -> {move.version:<3}  by {move.by}: {move.reason}")


COMMAND = Command("champion", "the served model (@champion) and who moved it when and why; --set moves it",
                  _arguments, _execute)
