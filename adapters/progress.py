"""Progress for a caller in the same process (the CLI's progress bars), as typed events.

The listener belongs to the caller's context (a ``ContextVar``), not to the module:
Prefect runs a flow's tasks in copies of the context it was called in, so every task of
that call, subflows and thread-pool tasks included, reaches the listener, and a run
started elsewhere in the process never does. With no listener this is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum


class Phase(StrEnum):
    PRETRAIN = "pretrain"  # one event per epoch
    CLASSIFIER = "classifier"  # one event per epoch
    REUSED = "reused"  # grid cells or trials an earlier, interrupted run finished: step = total = how many
    TRIAL = "trial"  # a tuning trial finished (complete, pruned or diverged)


@dataclass(frozen=True)
class ProgressEvent:
    phase: Phase
    step: int  # 1-based: the epoch, or the trial's number
    total: int  # the phase's epochs, or the trials asked for
    metrics: Mapping[str, float] = field(default_factory=dict)  # an epoch's metrics

    @property
    def finishes_phase(self) -> bool:
        return self.step == self.total


Listener = Callable[[ProgressEvent], None]
_listener: ContextVar[Listener | None] = ContextVar("dae_progress_listener", default=None)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send the progress of the flows run inside this block to ``listener``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def notify(event: ProgressEvent) -> None:
    if (listener := _listener.get()) is not None:
        listener(event)
