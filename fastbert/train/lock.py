"""One run per run directory: an advisory lock on run_dir/.lock, which also names its holder ("pid host").

The lock is fcntl.flock on the open file, so the kernel releases it when the holder exits, however it
exits: a lock file left by a dead process is simply taken over. Where flock is not supported (some network
file systems) the pid and host written in the file decide: a live process on this host keeps the lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket

from fastbert.errors import RunDirError

NAME = ".lock"


class RunLock:
    """Held from acquire() to release() (or the process's exit)."""

    def __init__(self, run_dir: str):
        self.run_dir, self.path = run_dir, os.path.join(run_dir, NAME)
        self.fd: int | None = None
        self.created = False  # the directory did not exist before acquire()

    def acquire(self) -> "RunLock":
        self.created = not os.path.isdir(self.run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise RunDirError(self._busy(holder)) from None
        except OSError:  # no flock on this file system: the pid and host in the file decide
            holder = _read(fd)
            if _alive(holder):
                os.close(fd)
                raise RunDirError(self._busy(holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Unlock; a directory that acquire() created and nothing else wrote to is removed (a command that
        failed early leaves no empty run for --resume to pick)."""
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)  # no holder named; the file stays (unlinking it would race a waiting run)
        if self.created and os.listdir(self.run_dir) == [NAME]:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
                os.rmdir(self.run_dir)
        os.close(self.fd)
        self.fd = None

    def _busy(self, holder: tuple[int, str] | None) -> str:
        who = f"pid {holder[0]} on {holder[1]}" if holder else "another process"
        return (f"{self.run_dir} is in use by another run ({who}; lock {self.path}): wait for it to end, or pick "
                "another --run_dir")


@contextlib.contextmanager
def held(run_dir: str):
    """The run directory's lock, for the duration of the block."""
    lock = RunLock(run_dir).acquire()
    try:
        yield lock
    finally:
        lock.release()


def _read(fd: int) -> tuple[int, str] | None:
    """(pid, host) written in the lock file, or None."""
    try:
        pid, host = os.pread(fd, 4096, 0).decode("utf-8", "replace").split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(holder: tuple[int, str] | None) -> bool:
    """Whether the holder is a live process on this host (another host's: assumed alive)."""
    if holder is None:
        return False
    pid, host = holder
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True
