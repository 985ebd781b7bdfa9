"""``dae tune``: each cell's training choices tuned on a validation split, the dae-tune flow."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from adapters.progress import Phase
from dae_cli import command
from dae_cli.arguments import whole_number
from dae_core.comparison import CELLS, MAX_PARALLEL, MAX_TRIALS
from dae_core.config import ConfigError
from dae_core.pareto import OBJECTIVES


def _arguments(parser: argparse.ArgumentParser) -> None:
    command.add_flow_options(parser)
    parser.add_argument("--cells", nargs="+", choices=list(CELLS),
                        help="the cells to tune (default: adam-noise sgd-noise)")
    parser.add_argument("--trials", type=whole_number(1, MAX_TRIALS), default=12,
                        help=f"trials per cell, complete or pruned, 1..{MAX_TRIALS} (default 12)")
    parser.add_argument("--objective", nargs="+", default=["mse"], choices=list(OBJECTIVES),
                        help="validation MSE of pretraining (default), validation accuracy of the classifier, or "
                             "its accuracy on noisy validation digits; several (e.g. accuracy noisy-accuracy): "
                             "a Pareto front per cell, whose points dae compare --tuned RUN --point NAME takes")
    parser.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                        help="a searched field, e.g. pretrain.lr=log:0.1:1000, classifier.lr=float:0.01:1, "
                             "pretrain.hidden_units=int:100:800, pretrain.noise.enabled=choice:true,false, "
                             "pretrain.lr=default (the range that suits each cell's optimizer); repeatable "
                             "(default: the pretraining rate over that range)")
    parser.add_argument("--parallel", type=whole_number(1, MAX_PARALLEL), default=1,
                        help=f"trials at once, 1..{MAX_PARALLEL} (default 1); with --fan-out, the deployment runs "
                             "sharing the trials")
    parser.add_argument("--fan-out", metavar="FLOW/DEPLOYMENT",
                        help="run the trials on the work pool in --parallel runs of this deployment, e.g. "
                             "dae-tune/optimizers (needs a Prefect server and a --storage every worker reaches)")
    parser.add_argument("--storage", metavar="URL",
                        help="the studies' database (env DAE_TUNING_STORAGE; default: optuna.db beside a local "
                             "tracking store, else in the work folder)")
    parser.add_argument("--summary-json", type=Path, help="write the best parameters per cell here")


def _load():
    from flows.tune import dae_tune

    return dae_tune


def _check_storage(url: str | None) -> None:
    """A studies' database URL SQLAlchemy can open, or none (the default): refused before any
    server starts, not in a traceback from inside the flow."""
    if url is None:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as error:
        # Not echoed: a URL may hold a password.
        raise ConfigError(f"--storage (or DAE_TUNING_STORAGE) is no database URL SQLAlchemy can open "
                          f"({type(error).__name__})", "pass sqlite:///PATH/optuna.db or "
                          "postgresql+psycopg://USER@HOST/DATABASE") from None


def _execute(args: argparse.Namespace, session: command.Session) -> int:
    from dae_core.tuning import DEFAULT_TUNED_CELLS, front_table, markdown_table, parse_dimension

    config = command.config_from(args)
    if len(set(args.objective)) < len(args.objective):
        raise ConfigError(f"--objective {' '.join(args.objective)}: an objective named twice",
                          "name each objective once, e.g. --objective accuracy noisy-accuracy")
    command.check_outputs(args, session)
    command.check_fan_out(args.fan_out)
    command.check_data(args, session, config)
    _check_storage(args.storage or session.settings.tuning_storage)
    for text in args.space:
        parse_dimension(text)  # refused here, before any server or import, naming the entry
    objective = args.objective[0] if len(args.objective) == 1 else args.objective
    trials = functools.partial(command.CountBar, len(args.cells or DEFAULT_TUNED_CELLS) * args.trials, "trials",
                               "trial", lambda event: event.phase == Phase.TRIAL)
    report = command.run_flow(session, _load, trials, tuning=True, base=config, cells=args.cells, trials=args.trials,
                      objective=objective, space=args.space or None, parallel=args.parallel,
                      data_dir=args.data_dir, download=not args.no_download, experiment_name=args.experiment,
                      work_dir=args.work_dir, storage=args.storage, fan_out_deployment=args.fan_out)
    command.write_json(args.summary_json, report.model_dump(include={"cells": {"__all__": {"best_params", "best_value",
                                                                                   "trials", "pruned", "front"}},
                                                             "mlflow_run_id": True, "reused": True}))
    if report.reused:
        print(f"already tuned: nothing trained, the studies hold {args.trials} trials per cell from MLflow run "
              f"{report.mlflow_run_id} (more trials: --trials; a new search: another --seed or --experiment)\n")
    print(markdown_table(report))
    fronts = [result for result in report.cells.values() if result.front]
    for result in fronts:
        print(f"\nfront of {result.cell}:\n{front_table(result)}")
    point = " --point knee (or best-<objective>, noisy-within:MARGIN)" if fronts else ""
    print(f"\nMLflow run {report.mlflow_run_id}; compare at these settings: "
          f"dae compare --tuned {report.mlflow_run_id}{point}")
    return 0


COMMAND = command.Command("tune", "tune each cell's training choices on a validation split (dae-tune)", _arguments,
                          _execute)
