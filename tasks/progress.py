"""In-process listeners for per-epoch progress (the CLI's progress bars). Tasks notify
them next to the Prefect progress artifact; with no listener this is a no-op."""

from __future__ import annotations

from collections.abc import Callable

# (phase, epoch, total epochs of the phase, that epoch's metrics)
Listener = Callable[[str, int, int, dict[str, float]], None]
_listeners: list[Listener] = []


def add_listener(listener: Listener) -> None:
    _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    _listeners.remove(listener)


def notify(phase: str, epoch: int, total: int, metrics: dict[str, float]) -> None:
    for listener in list(_listeners):
        listener(phase, epoch, total, metrics)
