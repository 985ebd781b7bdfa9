import math

import pytest

from tasks.registry import decide


def test_first_model_becomes_champion():
    decision = decide("1", 91.0, None, None, margin=0.1)
    assert decision.action == "first-champion"


def test_promotion_needs_the_margin():
    assert decide("2", 91.2, "1", 91.0, margin=0.1).action == "promoted"
    held = decide("2", 91.05, "1", 91.0, margin=0.1)
    assert held.action == "challenger" and "margin 0.10" in held.reason
    assert decide("2", 90.0, "1", 91.0, margin=0.0).action == "challenger"


def test_a_non_finite_score_never_gets_an_alias():
    with pytest.raises(ValueError, match="refusing"):
        decide("3", math.nan, "1", 91.0, margin=0.1)
