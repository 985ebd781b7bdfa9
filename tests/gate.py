"""A process a test stops at a moment it chooses, not one it hopes to observe.

`python tests/gate.py MODULE:FUNCTION N GATE_DIR COMMAND...` runs ``dae COMMAND...``
(or, with COMMAND ``-c CODE``, the Python CODE) with ``MODULE.FUNCTION`` wrapped: its Nth
call, before it runs, writes GATE_DIR/reached and waits until GATE_DIR/released exists.
The process is then held at a known point (the third epoch saved, a second trial started),
where the test can SIGKILL it or stop a server under it, and release it or not. Tests only:
nothing of this is in the package.

The wrapper replaces the name in MODULE, so name the module that *looks the function up*
(``dae_core.stages:training_state``, not ``dae_core.checkpoint:training_state``).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any


class Gate:
    """The files a gated process and its test share."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.reached, self.released = folder, folder / "reached", folder / "released"

    def hold(self) -> None:
        self.reached.write_text(str(os.getpid()))
        while not self.released.exists():
            time.sleep(0.05)

    def release(self) -> None:
        self.released.touch()

    def wait_reached(self, process, timeout: float, what: str) -> None:
        """Until the gated process is held at the gate; fails naming ``what`` it waited for,
        with the process's output if it ended first."""
        deadline = time.monotonic() + timeout
        while not self.reached.exists():
            if process.poll() is not None:
                output = process.stdout.read() if process.stdout else ""
                raise AssertionError(f"the process ended (exit {process.returncode}) before {what}:\n"
                                     f"{output[-3000:] if isinstance(output, str) else output.decode()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}")
            time.sleep(0.05)


def command(target: str, call: int, folder: Path, *arguments: str) -> list[str]:
    """The command line that runs ``dae *arguments`` (or ``python -c CODE``) gated."""
    return [sys.executable, str(Path(__file__).resolve()), target, str(call), str(folder), *arguments]


# A run's per-epoch state is saved by `training_state`: held before its (N+1)th call, a run
# has saved N epochs and trains no further.
EPOCH_SAVE = "dae_core.stages:training_state"


def after_epochs(gate: Gate, epochs: int, *arguments: str) -> list[str]:
    """``dae *arguments`` (or ``python -c CODE``), held at ``gate`` once its runs have saved
    ``epochs`` epochs together."""
    return command(EPOCH_SAVE, epochs + 1, gate.folder, *arguments)


def _install(target: str, call: int, gate: Gate) -> None:
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, name)  # an AttributeError here: the test names a function that moved
    calls, lock = [0], threading.Lock()

    @functools.wraps(original)
    def gated(*args: Any, **kwargs: Any) -> Any:
        with lock:
            calls[0] += 1
            now = calls[0]
        if now == call:
            gate.hold()
        return original(*args, **kwargs)

    setattr(module, name, gated)


def main() -> None:
    del sys.path[0]  # this script's folder: its modules must not shadow the packages'
    target, call, folder, *arguments = sys.argv[1:]
    _install(target, int(call), Gate(Path(folder)))
    if arguments[:1] == ["-c"]:
        sys.argv = ["-c", *arguments[2:]]
        exec(compile(arguments[1], "<gated>", "exec"), {"__name__": "__main__"})
        return
    from dae_cli.main import entrypoint

    sys.argv = ["dae", *arguments]
    entrypoint()


if __name__ == "__main__":
    main()
