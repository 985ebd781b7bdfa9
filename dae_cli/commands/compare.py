"""``dae compare``: the optimizer x noise grid over seeds, the dae-compare flow."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

from adapters.progress import Phase, ProgressEvent
from dae_cli.arguments import whole_number
from dae_cli.command import (
    Command,
    CountBar,
    Session,
    add_flow_options,
    check_data,
    check_fan_out,
    check_outputs,
    config_from,
    run_flow,
    write_json,
)
from dae_core.comparison import CELLS, DEFAULT_CELLS, MAX_PARALLEL, MAX_SEEDS, diverged_names
from dae_core.config import ConfigError, build_config, deep_merge, parse_overrides
from dae_core.pareto import check_point


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_flow_options(parser)
    parser.add_argument("--seeds", type=whole_number(1, MAX_SEEDS), default=3,
                        help=f"seeds per cell, 1..{MAX_SEEDS} (default 3)")
    parser.add_argument("--parallel", type=whole_number(1, MAX_PARALLEL), default=1,
                        help=f"cells trained at once, 1..{MAX_PARALLEL} (default 1)")
    parser.add_argument("--cells", nargs="+", choices=list(CELLS),
                        help=f"the cells (default: {' '.join(DEFAULT_CELLS)}; the frozen-encoder and noisy "
                             "fine-tuning cells ask the robustness question)")
    parser.add_argument("--fan-out", metavar="FLOW/DEPLOYMENT",
                        help="send each cell to the work pool as a run of this deployment, "
                             "e.g. dae-experiment/lecture (needs a Prefect server)")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new grid even where an interrupted run of the same comparison "
                             "could be continued (default: continue it, reusing its finished cells)")
    parser.add_argument("--tuned", metavar="RUN_ID",
                        help="train each cell that this `dae tune` run tuned with its best parameters")
    parser.add_argument("--point", metavar="NAME",
                        help="with --tuned of a tuning of several objectives: the point of each cell's front to "
                             "train, knee, best-<objective> (e.g. best-noisy-accuracy) or noisy-within:MARGIN (the "
                             "best noisy accuracy within MARGIN points of the front's best clean accuracy); "
                             "default: the knee")
    parser.add_argument("--set-cell", dest="cell_overrides", action="append", default=[],
                        metavar="CELL:SECTION.FIELD=VALUE",
                        help="override one config field of one cell, over --set and --tuned; repeatable "
                             "(e.g. no-pretraining:classifier.lr=0.5)")
    parser.add_argument("--summary-json", type=Path, help="write the comparison here")


def _cell_finished(event: ProgressEvent) -> bool:
    return event.phase == Phase.CLASSIFIER and event.finishes_phase


def _load():
    from flows.compare import dae_compare

    return dae_compare


def _cell_overrides(assignments: list[str], preset: str, overrides: list[str]) -> dict[str, dict[str, Any]]:
    """``["no-pretraining:classifier.lr=0.5"]`` as ``{"no-pretraining": {"classifier": {"lr": 0.5}}}``,
    each checked with the ``--set`` overrides here, before any server starts."""
    flat: dict[str, list[str]] = {}
    for assignment in assignments:
        cell, sep, field = assignment.partition(":")
        if not sep or cell not in CELLS:
            raise ConfigError(f"--set-cell {assignment!r}: expected CELL:SECTION.FIELD=VALUE with a cell of "
                              f"{', '.join(CELLS)}")
        flat.setdefault(cell, []).append(field)
    nested = {cell: parse_overrides(fields) for cell, fields in flat.items()}
    shared = parse_overrides(overrides)
    for cell, override in nested.items():
        try:
            build_config(preset, deep_merge(shared, override))
        except ConfigError as error:
            raise ConfigError(f"--set-cell {cell}: {error.message}", error.fix or None) from None
    return nested


def _execute(args: argparse.Namespace, session: Session) -> int:
    config = config_from(args)
    check_outputs(args, session)
    overrides = _cell_overrides(args.cell_overrides, args.preset, args.overrides)
    if args.point is not None:
        if args.tuned is None:
            raise ConfigError(f"--point {args.point}: a point of whose fronts?",
                              "add --tuned RUN_ID of a `dae tune` run")
        check_point(args.point)
    check_fan_out(args.fan_out)
    check_data(args, session, config)
    cells = functools.partial(CountBar, len(args.cells or DEFAULT_CELLS) * args.seeds, "cells", "run",
                              _cell_finished)
    report = run_flow(session, _load, cells, base=config, seeds=args.seeds, parallel=args.parallel, cells=args.cells,
                      data_dir=args.data_dir, download=not args.no_download, experiment_name=args.experiment,
                      work_dir=args.work_dir, fan_out_deployment=args.fan_out, fresh=args.fresh,
                      tuned_run_id=args.tuned, tuned_point=args.point, cell_overrides=overrides or None)
    write_json(args.summary_json, report.model_dump())
    if report.reused:
        print(f"continued the interrupted comparison {report.mlflow_run_id}: {report.reused} of "
              f"{len(report.runs)} cell runs reused (--fresh trains them all again)\n")
    print(report.table_markdown)
    print()
    print(report.findings_markdown)
    if report.diverged:
        print(f"\ndae: {diverged_names(report.diverged)} diverged at the cell's settings, left out of the "
              "statistics above", file=sys.stderr)
        cell = report.diverged[0].cell
        print(f"  fix: a lower learning rate for that cell (--set-cell {cell}:classifier.lr=... or "
              f"--set-cell {cell}:pretrain.lr=...)", file=sys.stderr)
    return 0


COMMAND = Command("compare", "optimizer x noise grid over seeds (dae-compare)", _arguments, _execute)
