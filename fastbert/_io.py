"""Writing a file so that a crash leaves either the old one or the new one, never a part."""
from __future__ import annotations

import os
from collections.abc import Callable


def atomic_write(path: str | os.PathLike, content: str | Callable[[str], None]) -> None:
    """Replace `path` at once: `content` (text, UTF-8; or a function that writes a file or symlink at the
    temporary path it is given) goes to a temporary path beside `path`, which os.replace then moves onto
    `path`. On an error `path` is as it was and the temporary path is removed."""
    directory, name = os.path.split(os.fspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    _remove(tmp)  # left by a killed process with the same pid
    try:
        if isinstance(content, str):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    if os.path.lexists(path):
        os.unlink(path)
