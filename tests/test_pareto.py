"""Fronts and their named points on generated trials: the front is exactly the trials no
other beats, every named point is on it, and the names mean what they say."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dae_core.config import ConfigError
from dae_core.pareto import FrontPoint, check_point, choose, dominates, knee, pareto_front

TRADE_OFF = ("accuracy", "noisy-accuracy")
percent = st.floats(0, 100, allow_nan=False)


@st.composite
def trials(draw, objectives: tuple[str, ...] = TRADE_OFF, values=percent) -> list[FrontPoint]:
    rows = draw(st.lists(st.tuples(*(values for _ in objectives)), min_size=1, max_size=30))
    return [FrontPoint(trial=number, values=dict(zip(objectives, row, strict=True)), params={"pretrain.lr": number})
            for number, row in enumerate(rows)]


@given(trials(("accuracy", "noisy-accuracy", "mse"), st.floats(0, 1, allow_nan=False)))
def test_the_front_is_exactly_the_trials_no_other_trial_beats(points):
    objectives = ("accuracy", "noisy-accuracy", "mse")
    front = pareto_front(points, objectives)
    assert front, "some trial is always undominated"
    for point in points:
        beaten = any(dominates(other, point, objectives) for other in points)
        assert (point in front) == (not beaten)
    assert [p.values["accuracy"] for p in front] == sorted((p.values["accuracy"] for p in front), reverse=True)


@given(trials())
def test_every_named_point_is_on_the_front_and_the_names_mean_what_they_say(points):
    front = pareto_front(points, TRADE_OFF)
    best_clean = max(p.values["accuracy"] for p in points)
    best_noisy = max(p.values["noisy-accuracy"] for p in points)
    for name in ("knee", "best-accuracy", "best-noisy-accuracy", "noisy-within:0", "noisy-within:0.5",
                 "noisy-within:100"):
        assert choose(front, TRADE_OFF, name) in front
    assert choose(front, TRADE_OFF, "best-accuracy").values["accuracy"] == best_clean
    assert choose(front, TRADE_OFF, "best-noisy-accuracy").values["noisy-accuracy"] == best_noisy
    # No margin: the front's one point at the best clean accuracy; any margin: the best noisy.
    assert choose(front, TRADE_OFF, "noisy-within:0") == choose(front, TRADE_OFF, "best-accuracy")
    assert choose(front, TRADE_OFF, "noisy-within:100").values["noisy-accuracy"] == best_noisy
    within = choose(front, TRADE_OFF, "noisy-within:0.5")
    assert within.values["accuracy"] >= best_clean - 0.5
    assert all(p.values["noisy-accuracy"] <= within.values["noisy-accuracy"]
               for p in front if p.values["accuracy"] >= best_clean - 0.5)


def test_the_knee_is_the_balanced_point_of_a_bent_front():
    values = [(98.0, 60.0), (97.5, 85.0), (96.0, 88.0), (90.0, 89.0)]
    front = pareto_front([FrontPoint(trial=n, values=dict(zip(TRADE_OFF, v, strict=True)), params={})
                          for n, v in enumerate(values)], TRADE_OFF)
    assert knee(front, TRADE_OFF).trial == 1
    assert choose(front, TRADE_OFF, "noisy-within:0.5").trial == 1
    assert choose(front, TRADE_OFF, "noisy-within:2").trial == 2


def test_a_minimized_objective_counts_lower_as_better():
    low, high = (FrontPoint(trial=n, values={"mse": v, "accuracy": 90.0}, params={})
                 for n, v in enumerate((0.01, 0.02)))
    assert dominates(low, high, ("mse", "accuracy")) and pareto_front([high, low], ("mse", "accuracy")) == [low]
    assert choose([high, low], ("mse", "accuracy"), "best-mse") == low


@given(st.text(max_size=30))
def test_any_text_is_a_point_name_or_refused_with_the_names(name):
    try:
        assert check_point(name) == name
    except ConfigError as error:
        assert "knee" in error.fix


@pytest.mark.parametrize("name, objectives, says", [
    ("best-noisy-accuracy", ("mse", "accuracy"), "objectives are mse, accuracy"),
    ("noisy-within:0.5", ("accuracy", "mse"), "needs a tuning of accuracy and noisy-accuracy"),
    ("noisy-within:-1", None, "0..100"),
    ("noisy-within:nan", None, "0..100"),
    ("best-loss", None, "no objective"),
])
def test_a_point_the_tuning_cannot_have_is_refused_naming_why(name, objectives, says):
    with pytest.raises(ConfigError, match=says):
        check_point(name, objectives)


def test_the_fronts_figure_draws_every_recipe_even_a_point_of_one_seed(tmp_path):
    """A point trained on one seed has no interval (NaN): it is drawn without its band."""
    import math

    import numpy as np
    from PIL import Image

    from dae_core import figures

    nan = math.nan
    path = figures.fronts_with_seed_bands(
        {"adam-noise": ([95.0, 93.0], [60.0, 85.0]), "adam-clean": ([95.2], [90.0])},
        {"adam-noise": [("knee", (94.4, 94.2, 94.6), (76.0, 74.0, 78.0), [(94.3, 75.0), (94.5, 77.0)])],
         "sgd-clean": [("best-accuracy", (96.1, nan, nan), (85.0, nan, nan), [(96.1, 85.0)])]},
        tmp_path / "fronts.png", "fronts")
    with Image.open(path) as image:
        assert image.size == tuple(round(side * figures.DPI) for side in figures.FRONTS_INCHES)
        assert np.asarray(image.convert("L")).std() > 1


def test_two_names_of_one_trial_are_drawn_once_under_both(tmp_path, monkeypatch):
    """A front of two points has its knee on an end: that trial's runs are named twice."""
    from dae_core import figures

    labels: list[list[str]] = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda figure, path: labels.append(
        [text.get_text() for text in figure.axes[0].texts]) or save(figure, path))
    end = ((91.7, 91.5, 91.9), (85.4, 83.0, 87.0), [(91.6, 85.2), (91.8, 85.6)])
    robust = ((91.6, 91.4, 91.8), (88.8, 88.3, 89.3), [(91.6, 88.8), (91.6, 88.9)])
    figures.fronts_with_seed_bands({}, {"adam-clean-frozen": [("best-accuracy", *end), ("knee", *end),
                                                               ("best-noisy-accuracy", *robust)]},
                                   tmp_path / "fronts.png", "fronts")
    assert sorted(labels[0]) == ["best-accuracy = knee", "best-noisy-accuracy"]
