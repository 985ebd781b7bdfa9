"""What ``dae``'s flags accept, checked as the command line is read: before any server
starts, any slow import, any model. A refused value ends like every refusal of ``dae``:
the cause on one line, the fix on the next, exit code 2 (docs/reliability.md)."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

from dae_core.config import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse, refusing in ``dae``'s two lines instead of its usage text."""

    def error(self, message: str):  # argparse's hook for every refusal of the command line
        raise ConfigError(message, f"see `{self.prog} --help`")


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """A flag's converter: a whole number from ``low`` to ``high``."""

    def convert(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    return convert


def positive_number(high: float) -> Callable[[str], float]:
    """A flag's converter: a finite number above 0 and at most ``high``."""

    def convert(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and 0 < value <= high):
            raise argparse.ArgumentTypeError(f"{text} is outside (0, {high:g}]")
        return value

    return convert


def one_line(longest: int) -> Callable[[str], str]:
    """A flag's converter: a name of 1 to ``longest`` characters on one line (MLflow keeps
    experiment names up to 500; a control character would break the lines it is shown in)."""

    def convert(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError("an empty name")
        if len(text) > longest:
            raise argparse.ArgumentTypeError(f"a name of {len(text)} characters; at most {longest}")
        if re.search(r"[\x00-\x1f\x7f]", text):
            raise argparse.ArgumentTypeError(f"{text!r} holds a control character")
        return text

    return convert


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(folder: Path, flag: str, given: Path | None = None) -> None:
    """``folder`` is a folder this process may create or write in (nothing is created here);
    ``given``: the path the person passed, where ``folder`` is the one it lies in."""
    folder = folder.expanduser().absolute()
    shown = given or folder
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise ConfigError(f"{flag} {shown}: {existing} is a file, not a folder",
                          f"pass a path in a folder for {flag} (or move the file away)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {shown}: {existing} may not be written by this user",
                          f"pass a path you may write for {flag}, or ask its owner for write access")


def check_writable_file(path: Path, flag: str) -> None:
    """``path`` can be written (created or replaced) by this process; nothing is created here."""
    path = path.expanduser().absolute()
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: a folder, not a file", f"name a file for {flag}, e.g. {path / 'out.json'}")
    check_writable_folder(path.parent, flag, given=path)
