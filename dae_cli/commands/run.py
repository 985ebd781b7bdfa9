"""``dae run``: one experiment, the dae-experiment flow, in this process."""

from __future__ import annotations

import argparse
from pathlib import Path

from dae_cli.arguments import whole_number
from dae_cli.command import (
    Command,
    PhaseBars,
    Session,
    add_flow_options,
    check_data,
    check_outputs,
    config_from,
    run_flow,
    write_json,
)


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_flow_options(parser)
    parser.add_argument("--seed", type=whole_number(0, 2**31 - 1), help="random seed (same as --set seed=N)")
    parser.add_argument("--summary-json", type=Path, help="write the run summary here")
    parser.add_argument("--name", help="name of the Prefect flow run and the MLflow run (default <preset>-seed<N>)")


def _load():
    from flows.experiment import dae_experiment

    return dae_experiment


def _execute(args: argparse.Namespace, session: Session) -> int:
    config = config_from(args)
    check_outputs(args, session)
    check_data(args, session, config)
    summary = run_flow(session, _load, PhaseBars, config=config, data_dir=args.data_dir,
                       download=not args.no_download, experiment_name=args.experiment, work_dir=args.work_dir,
                       name=args.name)
    write_json(args.summary_json, summary.model_dump())
    final_mse = summary.pretrain.mse[-1] if summary.pretrain.mse else float("nan")
    print(f"test accuracy {summary.test.accuracy:.2f}%  noisy {summary.test.noisy_accuracy:.2f}%  "
          f"final MSE {final_mse:.4f}  MLflow run {summary.mlflow_run_id}")
    return 0


COMMAND = Command("run", "run one experiment (the dae-experiment flow)", _arguments, _execute)
