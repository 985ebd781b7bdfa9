"""The Optuna glue of ``dae tune``: where the studies live, opening them with their pruner
and a seeded sampler, asking for a trial and telling its end, counting a study's budget,
reading a cell's result and the points its figures draw.

Optuna is imported inside the functions: ``dae compare`` imports this module (through the
fan-out's progress) and never tunes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.mlflow_store import tracking_uri
from dae_core.config import ConfigError, ExperimentConfig
from dae_core.errors import EXIT_SERVER, DaeError
from dae_core.pareto import DIRECTIONS, FrontPoint, Objective
from dae_core.runtime import derive_seed
from dae_core.tuning import CellSearch, CellTuning, cell_tuning

if TYPE_CHECKING:
    import optuna

# A study's user attribute: the id of the parent MLflow run its trials are filed under.
PARENT_ATTR = "dae.mlflow_run_id"


class TrialPruned(Exception):
    """The pruner stopped a trial that fell behind (raised by ``report``)."""


class TuningIncomplete(DaeError):
    """Fanned-out workers ended before every study held its trials."""

    exit_code = EXIT_SERVER
    fix = "run the same command again: it continues the studies"


def storage_url(work_dir: str, given: str | None) -> str:
    """Where the studies live: ``given`` (e.g. a PostgreSQL URL shared by machines), else
    an SQLite file beside a local tracking store, else in the work folder."""
    if given:
        return given
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve().parent / 'optuna.db'}"
    return f"sqlite:///{Path(work_dir).resolve() / 'optuna.db'}"


def shown(storage: str) -> str:
    """A storage URL without its password, fit for messages and logs."""
    from sqlalchemy.engine import make_url

    return make_url(storage).render_as_string(hide_password=True)


def shareable(storage: str) -> str | None:
    """``storage`` as a fan-out passes it to its workers: only without a password, which
    would show among the runs' parameters; else each worker uses its own DAE_TUNING_STORAGE."""
    from sqlalchemy.engine import make_url

    return storage if make_url(storage).password is None else None


def _counted() -> tuple:
    """The trials a study's budget counts: complete, or stopped by the pruner or by divergence."""
    import optuna

    return optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


def counted(study: optuna.Study) -> int:
    """How many of the study's trials its budget counts (every process's)."""
    return len(study.get_trials(deepcopy=False, states=_counted()))


def _counted_in_order(study: optuna.Study) -> list:
    """The study's counted trials, first started first: a cell's budget is the first N."""
    return sorted(study.get_trials(deepcopy=False, states=_counted()), key=lambda trial: trial.number)


def _pruner(config: ExperimentConfig, objectives: tuple[Objective, ...]) -> optuna.pruners.BasePruner:
    """Pruning compares a trial's epoch with the median of earlier trials at that epoch, after
    a few complete ones and only in the second half of training: early on every curve is
    ranked by its step size (a first run pruned at epoch 2 every Adam rate below the best,
    0.0043 next to 0.0044). A study of several objectives prunes nothing: a trial behind on
    one objective may be on the front by another (Optuna's pruners take one value)."""
    import optuna

    if len(objectives) > 1:
        return optuna.pruners.NopPruner()
    epochs = config.pretrain.epochs if objectives == ("mse",) else config.classifier.epochs
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=epochs // 2)


def open_study(name: str, storage: str, config: ExperimentConfig, objectives: tuple[Objective, ...],
               worker: int = 0) -> optuna.Study:
    """The study ``name``, created where missing by the process that owns the tuning
    (``worker`` 0); a fanned-out worker only joins it. Several objectives: a multi-objective
    study, which TPE samples as well (Optuna's MOTPE)."""
    import optuna

    pruner = _pruner(config, objectives)
    if worker == 0:
        study = optuna.create_study(study_name=name, storage=storage,
                                    directions=[DIRECTIONS[objective] for objective in objectives],
                                    load_if_exists=True, pruner=pruner)
    else:
        try:
            study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
        except KeyError:
            raise ConfigError(
                f"study {name} is not in this worker's study storage {shown(storage)}",
                "give the workers DAE_TUNING_STORAGE naming the database that `dae tune --fan-out` uses (--storage)",
            ) from None
    # Seeded, so that the same command proposes the same trials; but not with the same seed
    # in each of several workers or in a resumed study, which would propose again the points
    # already tried. A fresh study in one process keeps the plain seed its recorded runs used.
    done = len(study.get_trials(deepcopy=False))
    seed = config.seed if (worker, done) == (0, 0) else derive_seed(config.seed, f"tune:{worker}:{done}") % 2**32
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    return study


def create_studies(searches: list[CellSearch], storage: str, parent_run_id: str) -> None:
    """Create the studies (a fan-out's workers only open them, so that one pointed at another
    database fails instead of tuning on its own), each recording the MLflow run its trials
    are filed under: the first tuning that opened it."""
    for search in searches:
        study = open_study(search.study, storage, search.config, search.objectives)
        if PARENT_ATTR not in study.user_attrs:
            study.set_user_attr(PARENT_ATTR, parent_run_id)


def tuning_that_filled(studies: list[str], storage: str, trials: int) -> str | None:
    """The MLflow run id recorded by the studies when every one of them already holds
    ``trials`` counted trials and they name the same run; else None."""
    import optuna

    parents = set()
    for name in studies:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            return None
        if counted(study) < trials:
            return None
        parents.add(study.user_attrs.get(PARENT_ATTR))
    return parents.pop() if len(parents) == 1 else None


def ask(study: optuna.Study) -> optuna.Trial:
    """A new trial of the study, its point drawn by the sampler when suggested."""
    return study.ask()


def report(trial: optuna.Trial, epoch: int, value: float) -> None:
    """Record an epoch's validation value; raises ``TrialPruned`` when the pruner stops the
    trial there."""
    trial.report(value, epoch)
    if trial.should_prune():
        raise TrialPruned(f"epoch {epoch}: {value:.4g} is worse than the median of earlier trials")


@dataclass(frozen=True)
class TrialEnd:
    """How a trial ended: ``complete`` with its values (one per objective, in order),
    ``pruned`` or ``diverged`` (both pruned for the sampler: a region to avoid), or
    ``failed`` (an error, raised after)."""

    state: str
    values: tuple[float, ...] = ()


def tell(study: optuna.Study, trial: optuna.Trial, end: TrialEnd) -> None:
    """Record the trial's end in the study."""
    import optuna

    if end.state == "complete":
        study.tell(trial, end.values[0] if len(end.values) == 1 else list(end.values))
    else:
        study.tell(trial, state=optuna.trial.TrialState.FAIL if end.state == "failed"
                   else optuna.trial.TrialState.PRUNED)


def _front_point(trial, objectives: tuple[Objective, ...]) -> FrontPoint:
    return FrontPoint(trial=trial.number, values=dict(zip(objectives, trial.values, strict=True)),
                      params=trial.params)


def cell_result(cell: str, study: optuna.Study, objectives: tuple[Objective, ...], trials: int) -> CellTuning:
    """The cell's result over its first ``trials`` complete or pruned trials: workers sharing
    a study may finish a few more (each stops only when the count is reached), and every
    cell gets the same budget."""
    import optuna

    scored = _counted_in_order(study)[:trials]
    complete = [_front_point(trial, objectives) for trial in scored if trial.state == optuna.trial.TrialState.COMPLETE]
    return cell_tuning(cell, study.study_name, objectives, complete, len(scored))


def load(name: str, storage: str) -> optuna.Study:
    import optuna

    return optuna.load_study(study_name=name, storage=storage)


def read_results(searches: list[CellSearch], storage: str, trials: int) -> list[CellTuning]:
    """Each cell's result, read from its study; ``TuningIncomplete`` where a study holds
    fewer than ``trials`` (the workers that shared it ended early)."""
    results = []
    for search in searches:
        result = cell_result(search.cell, load(search.study, storage), search.objectives, trials)
        if result.trials < trials:
            raise TuningIncomplete(f"cell {search.cell}: {result.trials} of {trials} trials done when the workers "
                                   "ended (see their flow runs)")
        results.append(result)
    return results


def beyond_budget(study: optuna.Study, trials: int) -> set[str]:
    """The numbers of the counted trials past the first ``trials`` (finished by workers that
    stopped together): recorded, not scored."""
    return {str(trial.number) for trial in _counted_in_order(study)[trials:]}


@dataclass(frozen=True)
class StudyPoints:
    """What a study's figures draw: its complete trials in order, their values (by
    objective) and points."""

    numbers: list[int]
    values: dict[str, list[float]]
    params: dict[str, list[Any]]
    log_scale: set[str]


def points(study: optuna.Study, objectives: tuple[Objective, ...]) -> StudyPoints:
    import optuna

    complete = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                      key=lambda trial: trial.number)
    keys = sorted({key for trial in complete for key in trial.params})
    log_scale = {key for trial in complete for key, distribution in trial.distributions.items()
                 if getattr(distribution, "log", False)}
    return StudyPoints([trial.number for trial in complete],
                       {objective: [trial.values[index] for trial in complete]
                        for index, objective in enumerate(objectives)},
                       {key: [trial.params.get(key) for trial in complete] for key in keys}, log_scale)


class StudyProgress:
    """How many trials of some studies' budgets (``trials`` each) are complete or pruned so
    far, asked again and again while workers run them: one connection pool for all the
    asking, not one per question."""

    def __init__(self, names: list[str], storage: str, trials: int) -> None:
        import optuna

        shared = optuna.storages.RDBStorage(storage)
        self.studies = [optuna.load_study(study_name=name, storage=shared) for name in names]
        self.trials = trials

    def counted(self) -> int:
        return sum(min(self.trials, counted(study)) for study in self.studies)
