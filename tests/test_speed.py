"""The CI speed guard: the project's pretraining epoch against a plain autograd epoch of the
same training, measured side by side in this process (a ratio: the machine's own speed
cancels out). It fails when the ratio falls more than MARGIN below the recorded one."""

from __future__ import annotations

import pytest

from dae_core import train
from dae_core.bench import speed_ratio

pytestmark = [pytest.mark.slow, pytest.mark.timing]  # timed side by side: on a quiet machine, minutes

# docs/benchmarks.md ("Speed guard"): the median ratio on the 2-core AMD EPYC, 1.03-1.06
# over three runs while another test suite ran beside it.
RECORDED_RATIO = 1.04
MARGIN = 0.25  # a step 4/3 as slow fails; run-to-run noise stays within a few percent


def test_the_pretraining_epoch_keeps_its_speed_against_plain_autograd():
    ratio = speed_ratio()
    assert ratio >= RECORDED_RATIO * (1 - MARGIN), (
        f"the pretraining epoch is {ratio:.2f}x plain autograd's speed, recorded {RECORDED_RATIO:.2f}x: "
        "a change slowed the training step (python -c 'from dae_core.bench import speed_ratio; "
        "print(speed_ratio())' to measure)")


def test_the_guard_fails_on_a_deliberately_slowed_step(monkeypatch):
    """The guard can fail: the same measurement with every step done twice is refused."""
    real_step = train.make_pretrain_step

    def slowed(*args, **kwargs):
        step = real_step(*args, **kwargs)

        def twice(pixels, index, generator):
            step(pixels, index, generator)
            return step(pixels, index, generator)

        return twice

    monkeypatch.setattr(train, "make_pretrain_step", slowed)
    ratio = speed_ratio()
    assert ratio < RECORDED_RATIO * (1 - MARGIN), f"a step done twice still measured {ratio:.2f}x"
