"""One run per synthetic-set folder: an advisory `fcntl.flock` on `.synfer/lock`, held for the whole run.

- A run (or process 0 of an `accelerate launch` / `torchrun` launch, whose other processes follow it) holds the
  lock exclusively; a second run on the folder is refused with a message naming the holder, or waits (`wait`).
- Processes started by hand with `process_index` / `num_processes` share the folder: each holds `lock` shared and
  `lock.<index>` exclusively, so two of them with the same index, or a whole run beside them, exclude each other.
- The kernel releases a lock when its process dies, so the lock of a killed run is free at once; the holder note
  it left (`pid`, host, start time, in the lock file) is reported and replaced by the next run.

Locks are advisory and local-filesystem-grade: a folder shared over NFS needs a lock daemon for `flock` to hold.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

from ..data.writer import LOCK_FILE

logger = logging.getLogger(__name__)


class FolderLockedError(BlockingIOError):
    """The output folder is being written by another run (an `OSError`, errno `EAGAIN`)."""


class OutputLock:
    r"""
    The lock of a synthetic-set folder for one process of a run.

    Args:
        output_dir (`str` or `os.PathLike`): the dataset folder (its `.synfer/` is created if needed).
        part (`int`, *optional*): this process's index when processes are started by hand (shared folder lock +
            an exclusive lock on the part); `None`: the whole folder, exclusively.
        wait (`bool`, defaults to False): wait for the holder to finish instead of raising [`FolderLockedError`].

    Example:

    ```py
    >>> with OutputLock("outputs/demo"):
    ...     ...  # write the set
    ```
    """

    def __init__(self, output_dir: str | os.PathLike, part: int | None = None, wait: bool = False):
        self.output_dir = Path(output_dir)
        self.part = part
        self.wait = wait
        self._files: list[IO[str]] = []

    @property
    def paths(self) -> list[tuple[Path, int]]:
        """`(path, flock mode)` pairs, in locking order."""
        folder = self.output_dir / LOCK_FILE
        if self.part is None:
            return [(folder, fcntl.LOCK_EX)]
        return [(folder, fcntl.LOCK_SH), (folder.with_name(f"{folder.name}.{self.part}"), fcntl.LOCK_EX)]

    def acquire(self) -> OutputLock:
        """Takes the lock(s); raises [`FolderLockedError`] naming the holder when it is held and `wait` is False."""
        (self.output_dir / LOCK_FILE).parent.mkdir(parents=True, exist_ok=True)
        try:
            for path, mode in self.paths:
                self._lock(path, mode)
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        while self._files:
            handle = self._files.pop()
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _lock(self, path: Path, mode: int) -> None:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle, mode | (0 if self.wait else fcntl.LOCK_NB))
        except OSError as error:
            handle.close()
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise FolderLockedError(
                errno.EAGAIN, f"`output_dir` {str(self.output_dir)!r} is being written by another run ({_holder(path)}); wait "
                "for it to finish, pass --wait, or choose another --output-dir."
            ) from None
        self._files.append(handle)
        if mode == fcntl.LOCK_EX:
            previous = _holder(path)
            if previous != "holder unknown":
                logger.info(f"Taking over the lock of {self.output_dir} left by a finished run ({previous}).")
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(_holder_note()))
            handle.flush()


def _holder_note() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv),
    }


def _holder(path: Path) -> str:
    """The holder note of a lock file, as text."""
    try:
        note = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {note['pid']} on {note['host']}, since {note['started']}: {note['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


__all__ = ["FolderLockedError", "OutputLock"]
