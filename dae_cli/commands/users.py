"""``dae users``: the team stack's MLflow identities (worker, serving) and their grants."""

from __future__ import annotations

import argparse

from dae_cli.command import Command, Session, SetupError


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")


def _execute(args: argparse.Namespace, session: Session) -> int:
    from adapters.access import admin_refused, identities_from_env, sync_identities
    from adapters.mlflow_store import TrackingRefused, check_store, tracking_uri
    from dae_cli.terminal import mlflow_warnings_only

    identities = identities_from_env()
    with mlflow_warnings_only(session.verbose):
        if not tracking_uri().startswith(("http://", "https://")):
            raise SetupError("dae users needs an MLflow server with authentication on",
                             "set MLFLOW_TRACKING_URI, e.g. http://127.0.0.1:5000")
        try:
            check_store()
        except TrackingRefused:
            raise admin_refused(tracking_uri(), "HTTP 401") from None
        for line in sync_identities(tracking_uri(), identities):
            print(line)
    return 0


COMMAND = Command("users", "create or update the team stack's MLflow identities (worker, serving) and their "
                  "grants; run as MLflow's admin", _arguments, _execute)
