"""``dae serve``: the registered model over HTTP, MLflow's scoring protocol, one process per core.

``mlflow models serve`` (what the stack ran before) starts one uvicorn worker: on 2 cores,
32 clients sending 100-image requests waited up to 2 s and timed out. Here the version is
resolved and downloaded once, then this process becomes uvicorn (exec) with MLflow's
scoring app in ``--workers`` processes (default: the cores this process may use) behind a
request-size limit answered with 413 (adapters/serving_app.py). An alias is read at start:
after a promotion, restart the server to serve the new champion.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from adapters.serving_app import BODY_TIMEOUT_ENV, MAX_BODY_ENV, MODEL_DIR_ENV
from dae_cli.arguments import positive_number, whole_number
from dae_cli.command import Command, Session
from dae_core.config import ConfigError
from dae_core.summary import CHAMPION_URI

# 100 images are ~0.55 MB of JSON; 16 MiB holds about 3,000 images per request.
DEFAULT_MAX_BODY_MB = 16
# A body is held in memory while it is parsed, once per request in flight: past 1 GiB one
# request could take a worker's memory, and no client of a 784-float model needs it.
MAX_BODY_MB = 1024
MAX_WORKERS = 64
DEFAULT_BODY_TIMEOUT_S = 30.0


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=CHAMPION_URI, help=f"registered model URI (default {CHAMPION_URI})")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=whole_number(1, 65535), default=5001, help="port, 1..65535 (default 5001)")
    parser.add_argument("--workers", type=whole_number(1, MAX_WORKERS), default=len(os.sched_getaffinity(0)),
                        help=f"server processes, 1..{MAX_WORKERS} (default: the cores this process may use)")
    parser.add_argument("--max-body-mb", type=positive_number(MAX_BODY_MB), default=DEFAULT_MAX_BODY_MB,
                        help=f"largest request body accepted, in MiB, up to {MAX_BODY_MB} (default "
                             f"{DEFAULT_MAX_BODY_MB}); larger: 413")
    parser.add_argument("--body-timeout-s", type=positive_number(3600), default=DEFAULT_BODY_TIMEOUT_S,
                        help=f"seconds a request body may stop arriving before it is answered 408 (default "
                             f"{DEFAULT_BODY_TIMEOUT_S:g})")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")


def _execute(args: argparse.Namespace, session: Session) -> int:
    from adapters.model_registry import download
    from dae_cli.terminal import mlflow_warnings_only

    _check_listening(args.host, args.port)
    with mlflow_warnings_only(session.verbose):
        version, local = download(args.model, session.verbose)
    what = f"version {version.version} of {version.name}" if version is not None else args.model
    print(f"dae serve: {what} on http://{args.host}:{args.port}/invocations ({args.workers} workers, "
          f"bodies up to {args.max_body_mb:g} MiB)", flush=True)
    environment = {**os.environ, MODEL_DIR_ENV: str(local),
                   MAX_BODY_ENV: str(int(args.max_body_mb * 2**20)), BODY_TIMEOUT_ENV: str(args.body_timeout_s)}
    os.execve(sys.executable, [sys.executable, "-m", "uvicorn", "--factory", "adapters.serving_app:create_app",
                               "--host", args.host, "--port", str(args.port), "--workers", str(args.workers),
                               "--log-level", "info" if session.verbose else "warning"], environment)
    return 0  # not reached: this process is uvicorn now


def _check_listening(host: str, port: int) -> None:
    """Refuse an address the server could not listen on (unknown, not this machine's, or a
    port in use) before the model is fetched: uvicorn would say it in a traceback after."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as error:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error})",
                          "pass --host 127.0.0.1 (this machine) or 0.0.0.0 (every interface) and a free --port"
                          ) from None


COMMAND = Command("serve", "serve the registered model over HTTP (MLflow's protocol, one process per core)",
                  _arguments, _execute)
