"""The process tests under load (`make test-under-load`, before a release; not in CI's time).

Runs the tests that start, kill, hold and race processes (the `slow` and `realstack` ones,
the timing guards aside: they compare seconds, which a hog skews on purpose) ROUNDS times in
a row beside a CPU hog of one busy process per core (Debian's `stress-ng` where installed),
and prints each round's result and time. A test that decides by a race which branch it takes
fails here sooner or later; one that waits for a state it causes does not.

    python tests/under_load.py [ROUNDS] [PYTEST ARGS...]   (default: 3 rounds)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

MARKERS = "(slow or realstack) and not timing"
BUSY_LOOP = "while True: pass"


@contextlib.contextmanager
def cpu_hog() -> Iterator[str]:
    """One busy process per core until the block ends; yields what it runs."""
    cores = os.cpu_count() or 1
    if shutil.which("stress-ng"):
        hogs = [subprocess.Popen(["stress-ng", "--cpu", str(cores), "--quiet"], start_new_session=True)]
        described = f"stress-ng --cpu {cores}"
    else:
        hogs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], start_new_session=True) for _ in range(cores)]
        described = f"{cores} busy Python loops"
    try:
        yield described
    finally:
        for hog in hogs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(hog.pid, signal.SIGKILL)
            hog.wait()


def main(arguments: list[str]) -> int:
    rounds = int(arguments.pop(0)) if arguments and arguments[0].isdigit() else 3
    results = []
    with cpu_hog() as hog:
        for number in range(1, rounds + 1):
            print(f"--- round {number} of {rounds}: -m '{MARKERS}' beside {hog}", flush=True)
            started = time.monotonic()
            code = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", MARKERS, *arguments]).returncode
            results.append((code, time.monotonic() - started))
    for number, (code, seconds) in enumerate(results, 1):
        print(f"round {number}: {'passed' if code == 0 else f'FAILED (pytest exit {code})'} in {seconds / 60:.1f} min")
    return max(code for code, _ in results)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
