"""Failures a person can act on: one exception type that carries the cause, the fix and the
exit code of `dae`, raised where the cause is known. The CLI catches this type alone and
prints it; Prefect logs and MLflow failure tags show the same two lines."""

from __future__ import annotations

# `dae`'s exit codes (docs/commands.md).
EXIT_CONFIG, EXIT_DATA, EXIT_SERVER, EXIT_DIVERGED = 2, 3, 4, 5


class DaeError(Exception):
    """``str()`` is the cause, then ``  fix: ...`` on a second line where there is one.
    A subclass names its exit code and, where every instance shares it, its fix."""

    exit_code: int = 1
    fix: str = ""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message, fix)  # both in args, so that the error pickles whole
        self.message = message
        if fix is not None:
            self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message
