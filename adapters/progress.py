"""Per-epoch progress for a caller in the same process (the CLI's progress bars).

The listener belongs to the caller's context (a ``ContextVar``), not to the module:
Prefect runs a flow's tasks in copies of the context it was called in, so every task of
that call, subflows and thread-pool tasks included, reaches the listener, and a run
started elsewhere in the process never does. With no listener this is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

# (phase, epoch, total epochs of the phase, that epoch's metrics)
Listener = Callable[[str, int, int, dict[str, float]], None]
_listener: ContextVar[Listener | None] = ContextVar("dae_progress_listener", default=None)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send the progress of the flows run inside this block to ``listener``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def notify(phase: str, epoch: int, total: int, metrics: dict[str, float]) -> None:
    if (listener := _listener.get()) is not None:
        listener(phase, epoch, total, metrics)
