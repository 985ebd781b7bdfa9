"""Resumable-state folders, each held by one live process at a time.

Runs with the same state key (same configuration, data and tracking store) would share
one folder. The first live run holds ``<key>``; a second one started meanwhile holds
``<key>-2`` and trains with its own state, so neither reads nor overwrites the other's
files. Holding is an exclusive ``flock`` on ``<folder>/lock``: the kernel drops it when
the process dies however it dies (SIGKILL, OOM, a lost container), so the folder of a
killed run is free again for the rerun that resumes it. ``exclusive_file_lock`` is the
waiting kind, for processes that must take turns (a new database's first migration).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

LOCK_FILE = "lock"
log = logging.getLogger(__name__)


def _hold(folder: Path) -> IO[str] | None:
    """The open, exclusively locked lock file of ``folder``, or None while a live process
    holds it."""
    for _ in range(3):
        folder.mkdir(parents=True, exist_ok=True)
        lock = folder / LOCK_FILE
        stream = open(lock, "a+")
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.close()
            return None
        # The previous holder may have removed the folder (its run succeeded) between our
        # open and our lock: then we hold a file nobody else can see. Look again.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(stream.fileno()).st_ino:
                stream.seek(0)
                stream.truncate()
                stream.write(f"{os.getpid()}\n")
                stream.flush()
                return stream
        stream.close()
    return None


@contextlib.contextmanager
def exclusive_file_lock(path: Path) -> Iterator[None]:
    """Wait for, then hold, an exclusive ``flock`` on ``path`` for the block: how processes
    that would race on a new database (its first migration) take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def holder_pid(folder: Path) -> int | None:
    """The process id that holds (or last held) ``folder``, as its lock file records it."""
    with contextlib.suppress(OSError, ValueError):
        return int((folder / LOCK_FILE).read_text().split()[0])
    return None


def has_state(folder: Path) -> bool:
    return folder.is_dir() and any(path.name != LOCK_FILE for path in folder.iterdir())


def _candidates(first: Path) -> Iterator[Path]:
    """Folders to try, in order: existing ones holding saved state (a killed run's, to
    resume), the other existing ones, then new numbered siblings ``<name>-2``, ``<name>-3``..."""
    pattern = re.compile(rf"{re.escape(first.name)}-(\d+)")
    numbered = sorted((int(match.group(1)), path) for path in first.parent.glob(f"{first.name}-*")
                      if (match := pattern.fullmatch(path.name)))
    existing = [first, *(path for _, path in numbered)]
    with_state = [path for path in existing if has_state(path)]
    yield from with_state
    yield from (path for path in existing if path not in with_state)
    yield from (first.with_name(f"{first.name}-{index}") for index in itertools.count(len(existing) + 1))


@contextlib.contextmanager
def held_state_folder(first: Path) -> Iterator[Path]:
    """Hold the state folder of one run for the duration of the block: ``first`` unless a
    live process holds it (or a killed run left its state in a sibling). The folder stays
    when the block ends: the caller removes it once the run has succeeded."""
    first.parent.mkdir(parents=True, exist_ok=True)
    for folder in _candidates(first):
        if (lock := _hold(folder)) is not None:
            break
    if folder != first:
        log.info("resumable state in %s (%s: process %s)", folder, first.name, holder_pid(first))
    try:
        yield folder
    finally:
        lock.close()
