"""Pareto fronts of a multi-objective tuning and the named points taken from them.

A trial's values are by objective (``{"accuracy": 97.1, "noisy-accuracy": 91.0}``); which
way each improves is ``DIRECTIONS``. A front is every trial no other trial dominates (at
least as good on every objective, better on one). ``dae compare --tuned RUN --point NAME``
takes one point of each cell's front by name:

- ``best-<objective>``: the front's best on that objective (``best-accuracy``);
- ``knee``: the point closest to the front's ideal (every objective at the front's best),
  each objective scaled to the front's range, so that no objective's units weigh more;
- ``noisy-within:M``: the best noisy accuracy among the points whose clean accuracy is within
  ``M`` points of the front's best (the robustness a recipe buys for a little clean accuracy).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel

from dae_core.config import ConfigError

Objective = Literal["mse", "accuracy", "noisy-accuracy"]
OBJECTIVES: tuple[Objective, ...] = ("mse", "accuracy", "noisy-accuracy")
# Which way each objective improves (Optuna's study directions).
DIRECTIONS: dict[str, str] = {"mse": "minimize", "accuracy": "maximize", "noisy-accuracy": "maximize"}
KNEE = "knee"
_WITHIN = "noisy-within:"
# A margin of clean accuracy, in points of percent.
MAX_MARGIN = 100.0


class FrontPoint(BaseModel):
    """One trial of a study: its number, its values by objective, its parameters (by config field)."""

    trial: int
    values: dict[str, float]
    params: dict[str, Any]


def _better(objective: str, a: float, b: float) -> bool:
    return a < b if DIRECTIONS[objective] == "minimize" else a > b


def dominates(a: FrontPoint, b: FrontPoint, objectives: tuple[str, ...]) -> bool:
    """``a`` is at least as good as ``b`` on every objective and better on one."""
    return (all(not _better(o, b.values[o], a.values[o]) for o in objectives)
            and any(_better(o, a.values[o], b.values[o]) for o in objectives))


def pareto_front(points: list[FrontPoint], objectives: tuple[str, ...]) -> list[FrontPoint]:
    """The points no other point dominates, best on the first objective first (ties: the
    earlier trial). Points with a value that is not finite are left out."""
    finite = [p for p in points if all(math.isfinite(p.values[o]) for o in objectives)]
    front = [p for p in finite if not any(dominates(q, p, objectives) for q in finite)]
    sign = 1.0 if DIRECTIONS[objectives[0]] == "minimize" else -1.0
    return sorted(front, key=lambda p: (sign * p.values[objectives[0]], p.trial))


def check_point(name: str, objectives: tuple[str, ...] | None = None) -> str:
    """``name`` if it names a point (of a front over ``objectives`` when given), else ``ConfigError``."""
    fix = "name best-<objective> (e.g. best-noisy-accuracy), knee or noisy-within:MARGIN (e.g. noisy-within:0.5)"
    if name == KNEE:
        return name
    if name.startswith("best-"):
        objective = name.removeprefix("best-")
        if objective not in OBJECTIVES:
            raise ConfigError(f"--point {name!r}: {objective!r} is no objective ({', '.join(OBJECTIVES)})", fix)
        if objectives is not None and objective not in objectives:
            raise ConfigError(f"--point {name!r}: the tuning's objectives are {', '.join(objectives)}", fix)
        return name
    if name.startswith(_WITHIN):
        try:
            margin = float(name.removeprefix(_WITHIN))
        except ValueError:
            margin = math.nan
        if not 0.0 <= margin <= MAX_MARGIN:
            raise ConfigError(f"--point {name!r}: the margin is points of clean accuracy, 0..{MAX_MARGIN:g}", fix)
        if objectives is not None and not {"accuracy", "noisy-accuracy"} <= set(objectives):
            raise ConfigError(f"--point {name!r}: needs a tuning of accuracy and noisy-accuracy "
                              f"(its objectives are {', '.join(objectives)})", fix)
        return name
    raise ConfigError(f"--point {name!r} names no point of a front", fix)


def knee(front: list[FrontPoint], objectives: tuple[str, ...]) -> FrontPoint:
    """The point closest to the ideal, each objective scaled to the front's range (ties:
    the earlier trial)."""
    ideal, spread = {}, {}
    for objective in objectives:
        values = [p.values[objective] for p in front]
        ideal[objective] = min(values) if DIRECTIONS[objective] == "minimize" else max(values)
        spread[objective] = max(values) - min(values)

    def scaled_gap(point: FrontPoint) -> float:
        return sum((abs(point.values[o] - ideal[o]) / spread[o]) ** 2 for o in objectives if spread[o] > 0)

    return min(front, key=lambda point: (scaled_gap(point), point.trial))


def choose(front: list[FrontPoint], objectives: tuple[str, ...], name: str) -> FrontPoint:
    """The point of ``front`` (non-empty) that ``name`` names (``check_point``)."""
    check_point(name, objectives)
    if name == KNEE:
        return knee(front, objectives)
    if name.startswith("best-"):
        objective = name.removeprefix("best-")
        sign = 1.0 if DIRECTIONS[objective] == "minimize" else -1.0
        return min(front, key=lambda p: (sign * p.values[objective], p.trial))
    margin = float(name.removeprefix(_WITHIN))
    best_clean = max(p.values["accuracy"] for p in front)
    near = [p for p in front if p.values["accuracy"] >= best_clean - margin]
    return max(near, key=lambda p: (p.values["noisy-accuracy"], p.values["accuracy"], -p.trial))
