"""The one shape of a ``dae`` subcommand, and the skeleton of those that run a flow.

Each subcommand is a module of ``dae_cli/commands/`` holding one ``Command``: its name, its
arguments and what it executes. ``run``, ``compare`` and ``tune`` build their config
before anything starts (a refused setting costs no server), then ``run_flow`` starts
Prefect's temporary server early, imports the flow while it boots, and runs the flow in
this process with its progress shown on the terminal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from adapters.progress import Phase, ProgressEvent
from adapters.settings import Settings
from dae_cli.arguments import check_writable_file, check_writable_folder, one_line
from dae_core.config import PRESETS, ConfigError, ExperimentConfig, build_config, parse_overrides
from dae_core.errors import EXIT_SERVER, DaeError
from dae_core.summary import DEFAULT_EXPERIMENT

T = TypeVar("T")


@dataclass(frozen=True)
class Session:
    """How ``dae`` was started: ``verbose`` shows INFO logs and tracebacks;
    ``restore_terminal=False`` leaves Prefect's console as a command set it (for a process
    that ends with the command); ``settings`` from the environment, read once. The flows
    run in this process read theirs where they start, as on a worker."""

    verbose: bool
    restore_terminal: bool
    settings: Settings


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    execute: Callable[[argparse.Namespace, Session], int]


class SetupError(DaeError):
    """A command for the team stack cannot run here (no server, no deployments)."""

    exit_code = EXIT_SERVER


def add_flow_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that runs a flow."""
    parser.add_argument("--preset", default="lecture", choices=sorted(PRESETS),
                        help="named configuration to start from (default: lecture)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE", help="override one config field; repeatable")
    parser.add_argument("--data-dir",
                        help="folder holding <Dataset>/raw/ IDX files; env DAE_DATA_DIR; default ./data")
    parser.add_argument("--no-download", action="store_true",
                        help="fail instead of downloading when the raw files are missing")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, type=one_line(500),
                        help="MLflow experiment name (1 to 500 characters)")
    parser.add_argument("--work-dir", help="run outputs and resumable training state; "
                        "env DAE_WORK_DIR; default ./dae-work")
    parser.add_argument("--verbose", action="store_true", help="show Prefect's INFO logs in the terminal")


def config_from(args: argparse.Namespace) -> ExperimentConfig:
    overrides = parse_overrides(args.overrides)
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    return build_config(args.preset, overrides)


def check_fan_out(deployment: str | None) -> None:
    """Refuse ``--fan-out`` where its runs could never start: without a Prefect server
    (the temporary one has no workers)."""
    if not deployment:
        return
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ConfigError(f"--fan-out {deployment}: sends runs to a work pool, which needs a Prefect server",
                          "set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api, the team stack's) where "
                          "`prefect deploy --all` ran and workers listen on its pool")


def check_outputs(args: argparse.Namespace, session: Session) -> None:
    """Refuse a work folder or an output file this process cannot write, before any server
    starts: found inside the flow, it cost a traceback and a FAILED MLflow run every try."""
    check_writable_folder(Path(args.work_dir) if args.work_dir else session.settings.work_dir, "--work-dir")
    if args.summary_json is not None:
        check_writable_file(args.summary_json, "--summary-json")


def check_data(args: argparse.Namespace, session: Session, config: ExperimentConfig) -> None:
    """Refuse data that is missing and cannot be downloaded before any server starts. With
    ``--fan-out`` the workers read their own data folders: nothing to check here."""
    from dae_core.raw_files import check_obtainable

    if not getattr(args, "fan_out", None):
        check_obtainable(Path(args.data_dir) if args.data_dir else session.settings.data_dir,
                         config.data.dataset, allow_download=not args.no_download)


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        from dae_core.checkpoint import write_json as write

        write(path, payload)


class Display(Protocol):
    """Progress on the terminal: fed the flow's events, closed when it ends."""

    def __call__(self, event: ProgressEvent) -> None: ...

    def close(self) -> None: ...


class PhaseBars:
    """One bar per training phase, an epoch per step."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bars: dict[Phase, Any] = {}

    def __call__(self, event: ProgressEvent) -> None:
        bar = self._bars.get(event.phase)
        if bar is None:
            bar = self._bars[event.phase] = self._tqdm(total=event.total, desc=event.phase.value, unit="epoch",
                                                       file=sys.stderr)
            bar.update(event.step - 1)  # a resumed phase starts part-way
        bar.set_postfix({key: round(value, 4) for key, value in event.metrics.items()})
        bar.update(1)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


class CountBar:
    """One bar counting the events that ``counts`` picks (finished cells, trials), from where
    an earlier, interrupted run of the same command left off."""

    def __init__(self, total: int, desc: str, unit: str, counts: Callable[[ProgressEvent], bool]) -> None:
        from tqdm import tqdm

        self._bar, self._counts = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr), counts

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase == Phase.REUSED:
            self._count_earlier(event.total)
        elif self._counts(event):
            self._bar.update(1)

    def _count_earlier(self, finished: int) -> None:
        """Shown as done but kept out of the rate (tqdm's ``initial``, and the last printed
        count its moving average starts from), so the time left is this run's pace alone."""
        bar = self._bar
        bar.n += finished
        bar.initial += finished
        bar.last_print_n += finished
        bar.refresh()

    def close(self) -> None:
        self._bar.close()


def run_flow(session: Session, load_flow: Callable[[], Callable[..., T]], display: Callable[[], Display],
             tuning: bool = False, **parameters: Any) -> T:
    """Call the flow ``load_flow`` imports with ``parameters``, in this process, its output
    quiet unless ``--verbose``. With no ``PREFECT_API_URL`` the temporary server starts
    first, so that it boots on the other core while the flow's modules import."""
    from adapters import progress
    from adapters.prefect_server import server_settings, start_temporary_server
    from dae_cli.terminal import QuietTerminal

    with QuietTerminal(session.verbose, restore=session.restore_terminal) as terminal, server_settings():
        server = start_temporary_server()
        flow = load_flow()
        terminal.libraries_loaded(tuning=tuning)
        # torch imports ``torch._dynamo`` (~0.9 s) when it builds the first optimizer, and
        # every run builds one: imported here, it overlaps the server's boot instead of
        # delaying the first training task (docs/benchmarks.md, section 3).
        import torch._dynamo  # noqa: F401

        shown = display()
        try:
            with server, progress.listening(shown):
                return flow(**parameters)
        finally:
            shown.close()
