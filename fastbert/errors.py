"""Errors the user can cause: a bad setting, data or checkpoint file, or run directory, or a disk that refuses
a write. Each message is one line naming the thing and the cause; the CLI prints it and exits 2 (no traceback).
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user gave (or the machine) cannot be used as asked; str(e) is the whole story."""


class NotFoundError(UserError, FileNotFoundError):
    """A file or directory that should exist does not."""


class CheckpointError(UserError, ValueError):
    """A weights or trainer-state file that cannot be read, does not fit, or holds non-finite values."""


class WriteError(UserError, OSError):
    """A file that could not be written (read-only directory, full disk): the file and the cause."""


class RunDirError(UserError):
    """A run directory that cannot be used: in use by another run, or holding checkpoints already."""


def describe(e: BaseException) -> str:
    """One line for an exception: an OSError as "file: cause", anything else as its message."""
    if isinstance(e, OSError) and not isinstance(e, UserError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split("\n"))
