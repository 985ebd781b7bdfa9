"""``dae setup``: the automations that watch deployed runs, on the team's Prefect server."""

from __future__ import annotations

import argparse

from dae_cli.arguments import whole_number
from dae_cli.command import Command, Session, SetupError


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zombie-after", type=whole_number(45, 7 * 24 * 3600), default=90, metavar="SECONDS",
                        help="mark a deployed run Crashed after this long without a heartbeat "
                             "(they come every 30 s; default 90, at least 45)")
    parser.add_argument("--notify-webhook", metavar="URL",
                        help="post here when a retrain fails or crashes; env DAE_NOTIFY_WEBHOOK_URL")
    parser.add_argument("--no-retrain-on-drift", dest="retrain_on_drift", action="store_false",
                        help="remove the automation that starts dae-retrain/nightly when a dae-score batch drifts "
                             "from its model's reference (on by default)")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")


def _execute(args: argparse.Namespace, session: Session) -> int:
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise SetupError("dae setup needs a Prefect server", "set PREFECT_API_URL, e.g. http://127.0.0.1:4200/api "
                         "(automations never run on the temporary server of `dae run`)")
    import httpx

    from flows.automations import NOTIFY, RECONCILE_DEPLOYMENT, set_up_automations

    try:
        names = set_up_automations(args.zombie_after, args.notify_webhook or session.settings.notify_webhook_url,
                                   args.retrain_on_drift)
    except httpx.HTTPStatusError as error:
        if error.response.status_code in (401, 403):
            raise  # main explains it: the auth string
        raise SetupError(f"the Prefect server {PREFECT_API_URL.value()} answered {error.response.status_code}",
                         "check PREFECT_API_URL (it ends in /api)") from None
    except httpx.HTTPError as error:
        raise SetupError(f"the Prefect server {PREFECT_API_URL.value()} does not answer ({error})",
                         "start it, or correct PREFECT_API_URL") from None
    except ObjectNotFound:
        raise SetupError(f"deployment {RECONCILE_DEPLOYMENT} not found on {PREFECT_API_URL.value()}",
                         "run `prefect --no-prompt deploy --all` from the project folder first") from None
    for name in names:
        print(f"automation ready: {name}")
    if not args.retrain_on_drift:
        print("no retraining on drift: drifting batches are recorded (tag dae.monitor.verdict) and start nothing")
    if NOTIFY not in names:
        print("no notifications: set DAE_NOTIFY_WEBHOOK_URL (or --notify-webhook) to be told of failed retrains")
    return 0


COMMAND = Command("setup", "create the automations that watch deployed runs (needs a Prefect server and "
                  "`prefect deploy --all` first)", _arguments, _execute)
