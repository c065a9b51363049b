"""User-facing errors: one line, naming the file and the problem."""

from __future__ import annotations


class HemocountError(Exception):
    """An error the CLI reports as a single line (no traceback).

    Args:
        message: What went wrong, naming the file where there is one.
        exit_code: Process exit code the CLI uses for it.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        # Messages often embed a library's own text (torch, libpng), which may span lines.
        super().__init__(" ".join(line.strip() for line in str(message).splitlines() if line.strip()))
        self.exit_code = exit_code


class BadImageError(HemocountError):
    """An image that cannot be decoded or used."""


class WeightsError(HemocountError):
    """Missing, corrupt or mismatching model weights."""


class DatasetError(HemocountError):
    """A dataset folder or annotation file that cannot be read."""
