"""The ``dae`` command: ``run``, ``compare``, ``tune``, ``predict``, ``setup``, ``users``, ``bench``.

``run``, ``compare`` and ``tune`` run the Prefect flows in this process: with no
``PREFECT_API_URL`` Prefect starts a temporary local server and MLflow writes to
``sqlite:///mlflow.db``; with both servers configured the same command reports to them.
``predict`` loads a registered model without Prefect; ``setup`` and ``users`` configure the
team stack's servers. Every failure a person can act on is a ``DaeError``: one line of
cause, one of fix, an exit code.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dae_cli.prefect_server import server_settings, start_temporary_server
from dae_cli.terminal import QuietTerminal
from dae_core.comparison import CELLS, DEFAULT_CELLS
from dae_core.config import PRESETS, ConfigError, build_config, parse_overrides
from dae_core.errors import EXIT_DATA, EXIT_SERVER, DaeError
from dae_core.summary import CHAMPION_URI, DEFAULT_EXPERIMENT


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="lecture", choices=sorted(PRESETS),
                        help="named configuration to start from (default: lecture)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE", help="override one config field; repeatable")
    parser.add_argument("--data-dir", default=os.environ.get("DAE_DATA_DIR"),
                        help="folder holding <Dataset>/raw/ IDX files; env DAE_DATA_DIR; default ./data")
    parser.add_argument("--no-download", action="store_true",
                        help="fail instead of downloading when the raw files are missing")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")
    parser.add_argument("--work-dir", help="run outputs and resumable training state; "
                        "env DAE_WORK_DIR; default ./dae-work")
    parser.add_argument("--verbose", action="store_true", help="show Prefect's INFO logs in the terminal")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dae", description="Denoising-autoencoder MNIST pipeline")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one experiment (the dae-experiment flow)")
    _common(run)
    run.add_argument("--seed", type=int, help="random seed (same as --set seed=N)")
    run.add_argument("--summary-json", type=Path, help="write the run summary here")
    run.add_argument("--name", help="name of the Prefect flow run and the MLflow run (default <preset>-seed<N>)")

    compare = commands.add_parser("compare", help="optimizer x noise grid over seeds (dae-compare)")
    _common(compare)
    compare.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    compare.add_argument("--parallel", type=int, default=1, help="cells trained at once (default 1)")
    compare.add_argument("--cells", nargs="+", choices=list(CELLS),
                         help=f"the cells (default: {' '.join(DEFAULT_CELLS)}; the frozen-encoder and noisy "
                              "fine-tuning cells ask the robustness question)")
    compare.add_argument("--fan-out", metavar="FLOW/DEPLOYMENT",
                         help="send each cell to the work pool as a run of this deployment, "
                              "e.g. dae-experiment/lecture (needs a Prefect server)")
    compare.add_argument("--fresh", action="store_true",
                         help="start a new grid even where an interrupted run of the same comparison "
                              "could be continued (default: continue it, reusing its finished cells)")
    compare.add_argument("--tuned", metavar="RUN_ID",
                         help="train each cell that this `dae tune` run tuned with its best parameters")
    compare.add_argument("--summary-json", type=Path, help="write the comparison here")

    tune = commands.add_parser("tune", help="tune each cell's training choices on a validation split (dae-tune)")
    _common(tune)
    tune.add_argument("--cells", nargs="+", choices=list(CELLS),
                      help="the cells to tune (default: adam-noise sgd-noise)")
    tune.add_argument("--trials", type=int, default=12, help="trials per cell, complete or pruned (default 12)")
    tune.add_argument("--objective", default="mse", choices=["mse", "accuracy"],
                      help="validation MSE of pretraining (default) or validation accuracy of the classifier")
    tune.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                      help="a searched field, e.g. pretrain.lr=log:0.1:1000, classifier.lr=float:0.01:1, "
                           "pretrain.hidden_units=int:100:800, pretrain.noise.enabled=choice:true,false; "
                           "repeatable (default: the pretraining rate over a range that suits each optimizer)")
    tune.add_argument("--parallel", type=int, default=1,
                      help="trials at once (default 1); with --fan-out, the deployment runs sharing the trials")
    tune.add_argument("--fan-out", metavar="FLOW/DEPLOYMENT",
                      help="run the trials on the work pool in --parallel runs of this deployment, e.g. "
                           "dae-tune/optimizers (needs a Prefect server and a --storage every worker reaches)")
    tune.add_argument("--storage", default=os.environ.get("DAE_TUNING_STORAGE"), metavar="URL",
                      help="the studies' database (env DAE_TUNING_STORAGE; default: optuna.db beside a local "
                           "tracking store, else in the work folder)")
    tune.add_argument("--summary-json", type=Path, help="write the best parameters per cell here")

    predict = commands.add_parser("predict", help="the registered model's digit for each picture or IDX image")
    predict.add_argument("files", nargs="+", type=Path, metavar="FILE",
                         help="PNG, JPEG, ... (any size; light or dark paper) or an IDX file of 28x28 images")
    predict.add_argument("--model", default=CHAMPION_URI,
                         help=f"model URI (default {CHAMPION_URI}; e.g. models:/dae-mnist-classifier/3)")
    predict.add_argument("--json", action="store_true",
                         help='print [{"file", "digit", "probability", "probabilities"}, ...]')
    predict.add_argument("--verbose", action="store_true", help="show tracebacks")

    setup = commands.add_parser("setup", help="create the automations that watch deployed runs "
                                "(needs a Prefect server and `prefect deploy --all` first)")
    setup.add_argument("--zombie-after", type=int, default=90, metavar="SECONDS",
                       help="mark a deployed run Crashed after this long without a heartbeat "
                            "(they come every 30 s; default 90, at least 45)")
    setup.add_argument("--notify-webhook", default=os.environ.get("DAE_NOTIFY_WEBHOOK_URL"), metavar="URL",
                       help="post here when a retrain fails or crashes; env DAE_NOTIFY_WEBHOOK_URL")
    setup.add_argument("--verbose", action="store_true", help="show tracebacks")

    users = commands.add_parser("users", help="create or update the team stack's MLflow identities (worker, "
                                "serving) and their grants; run as MLflow's admin")
    users.add_argument("--verbose", action="store_true", help="show tracebacks")

    bench = commands.add_parser("bench", help="time the lecture's data path against this project's")
    bench.add_argument("--data-dir", default=os.environ.get("DAE_DATA_DIR", "data"))
    bench.add_argument("--epochs", type=int, default=2, help="timed epochs per path")
    bench.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--json", type=Path, help="write the measurements here")
    return parser


def _config(args: argparse.Namespace):
    overrides = parse_overrides(args.overrides)
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    return build_config(args.preset, overrides)


class _Bars:
    """One tqdm bar per training phase, fed by the tasks' epoch notifications."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bars: dict[str, Any] = {}

    def __call__(self, phase: str, epoch: int, total: int, metrics: dict[str, float]) -> None:
        bar = self._bars.get(phase)
        if bar is None:
            bar = self._bars[phase] = self._tqdm(total=total, desc=phase, unit="epoch", file=sys.stderr)
            bar.update(epoch - 1)  # a resumed phase starts part-way
        bar.set_postfix({key: round(value, 4) for key, value in metrics.items()})
        bar.update(1)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def _write(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        from dae_core.checkpoint import write_json

        write_json(path, payload)


def _import_torch_lazy_modules() -> None:
    """torch imports ``torch._dynamo`` (~0.9 s) when it builds the first optimizer, and
    every run builds one. Imported here, it overlaps the temporary server's boot instead
    of delaying the first training task (docs/benchmarks.md, section 3)."""
    import torch._dynamo  # noqa: F401


def _run(args: argparse.Namespace, terminal: QuietTerminal) -> int:
    config = _config(args)
    server = start_temporary_server()
    from adapters import progress
    from flows.experiment import dae_experiment

    terminal.libraries_loaded()
    _import_torch_lazy_modules()
    bars = _Bars()
    try:
        with server, progress.listening(bars):
            summary = dae_experiment(config=config, data_dir=args.data_dir, download=not args.no_download,
                                     experiment_name=args.experiment, work_dir=args.work_dir, name=args.name)
    finally:
        bars.close()
    _write(args.summary_json, summary.model_dump())
    final_mse = summary.pretrain.mse[-1] if summary.pretrain.mse else float("nan")
    print(f"test accuracy {summary.test.accuracy:.2f}%  noisy {summary.test.noisy_accuracy:.2f}%  "
          f"final MSE {final_mse:.4f}  MLflow run {summary.mlflow_run_id}")
    return 0


def _check_fan_out(deployment: str | None) -> None:
    """Refuse ``--fan-out`` where its runs could never start: without a Prefect server
    (the temporary one has no workers)."""
    from prefect.settings import PREFECT_API_URL

    if deployment and not PREFECT_API_URL.value():
        raise ConfigError(f"--fan-out {deployment}: sends runs to a work pool, which needs a Prefect server",
                          "set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api, the team stack's) where "
                          "`prefect deploy --all` ran and workers listen on its pool")


def _compare(args: argparse.Namespace, terminal: QuietTerminal) -> int:
    config = _config(args)
    _check_fan_out(args.fan_out)
    server = start_temporary_server()
    from tqdm import tqdm

    from adapters import progress
    from flows.compare import dae_compare
    from tasks.comparison import REUSED_PHASE

    terminal.libraries_loaded()
    _import_torch_lazy_modules()
    bar = tqdm(total=len(args.cells or DEFAULT_CELLS) * args.seeds, desc="cells", unit="run", file=sys.stderr)

    def count_finished(phase: str, epoch: int, total: int, metrics: dict[str, float]) -> None:
        if phase == REUSED_PHASE or (phase == "classifier" and epoch == total):
            bar.update(1)

    try:
        with server, progress.listening(count_finished):
            report = dae_compare(base=config, seeds=args.seeds, parallel=args.parallel, cells=args.cells,
                                 data_dir=args.data_dir, download=not args.no_download,
                                 experiment_name=args.experiment, work_dir=args.work_dir,
                                 fan_out_deployment=args.fan_out, fresh=args.fresh, tuned_run_id=args.tuned)
    finally:
        bar.close()
    _write(args.summary_json, report.model_dump())
    if report.reused:
        print(f"continued the interrupted comparison {report.mlflow_run_id}: {report.reused} of "
              f"{len(report.runs)} cell runs reused (--fresh trains them all again)\n")
    print(report.table_markdown)
    print()
    print(report.findings_markdown)
    return 0


def _tune(args: argparse.Namespace, terminal: QuietTerminal) -> int:
    from dae_core.tuning import markdown_table, parse_dimension

    config = _config(args)
    _check_fan_out(args.fan_out)
    for text in args.space:
        parse_dimension(text)  # refused here, before any server or import, naming the entry
    server = start_temporary_server()
    from tqdm import tqdm

    from adapters import progress
    from flows.tune import DEFAULT_TUNED_CELLS, dae_tune
    from tasks.tuning import TRIAL_PHASE

    terminal.libraries_loaded(tuning=True)
    _import_torch_lazy_modules()
    bar = tqdm(total=len(args.cells or DEFAULT_TUNED_CELLS) * args.trials, desc="trials", unit="trial",
               file=sys.stderr)
    try:
        with server, progress.listening(lambda phase, *_: bar.update(1) if phase == TRIAL_PHASE else None):
            report = dae_tune(base=config, cells=args.cells, trials=args.trials, objective=args.objective,
                              space=args.space or None, parallel=args.parallel, data_dir=args.data_dir,
                              download=not args.no_download, experiment_name=args.experiment,
                              work_dir=args.work_dir, storage=args.storage, fan_out_deployment=args.fan_out)
    finally:
        bar.close()
    _write(args.summary_json, report.model_dump(include={"cells": {"__all__": {"best_params", "best_value", "trials",
                                                                               "pruned"}},
                                                         "mlflow_run_id": True, "reused": True}))
    if report.reused:
        print(f"already tuned: nothing trained, the studies hold {args.trials} trials per cell from MLflow run "
              f"{report.mlflow_run_id} (more trials: --trials; a new search: another --seed or --experiment)\n")
    print(markdown_table(report))
    print(f"\nMLflow run {report.mlflow_run_id}; compare at these settings: dae compare --tuned {report.mlflow_run_id}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from dae_core.bench import run_benchmark

    result = run_benchmark(Path(args.data_dir), epochs=args.epochs, dtype=args.dtype, device=args.device)
    _write(args.json, result)
    print(json.dumps(result, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from dae_cli.predict import predict_files, print_predictions, report_errors
    from dae_cli.terminal import mlflow_warnings_only

    with mlflow_warnings_only(args.verbose):
        predictions, errors = predict_files(args.files, args.model)
    print_predictions(predictions, args.json)
    report_errors(errors)
    return EXIT_DATA if errors else 0


class SetupError(DaeError):
    """``dae setup`` or ``dae users`` cannot run here (no server, no deployments)."""

    exit_code = EXIT_SERVER


def _setup(args: argparse.Namespace) -> int:
    if args.zombie_after < 45:
        raise ConfigError(f"--zombie-after {args.zombie_after}: at least 45 s (heartbeats come every 30 s)")
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise SetupError("dae setup needs a Prefect server", "set PREFECT_API_URL, e.g. http://127.0.0.1:4200/api "
                         "(automations never run on the temporary server of `dae run`)")
    import httpx

    from flows.automations import NOTIFY, RECONCILE_DEPLOYMENT, set_up_automations

    try:
        names = set_up_automations(args.zombie_after, args.notify_webhook)
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
    if NOTIFY not in names:
        print("no notifications: set DAE_NOTIFY_WEBHOOK_URL (or --notify-webhook) to be told of failed retrains")
    return 0


def _users(args: argparse.Namespace) -> int:
    from adapters.tracking import TrackingRefused, check_store, tracking_uri
    from dae_cli.access import admin_refused, identities_from_env, sync_identities
    from dae_cli.terminal import mlflow_warnings_only

    identities = identities_from_env()
    with mlflow_warnings_only(args.verbose):
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
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    try:
        if args.command == "bench":
            return _bench(args)
        if args.command == "setup":
            return _setup(args)
        if args.command == "predict":
            return _predict(args)
        if args.command == "users":
            return _users(args)
        with QuietTerminal(verbose, restore=restore_terminal) as terminal, server_settings():
            return {"run": _run, "compare": _compare, "tune": _tune}[args.command](args, terminal)
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
