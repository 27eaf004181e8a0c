"""One writer per folder: an exclusive lock that a second run or conversion is refused by.

Two training runs sharing a model_dir, or two conversions writing into one data folder,
would interleave their checkpoints, logs or shards. The lock is an advisory `flock` on
`<folder>/.lock`: the kernel releases it when the holder exits, killed or not, so a
crashed run never leaves a stale lock behind. Object-store URLs (gs://, s3://) have no
such lock and are not locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator

from lambda_keras.cli import UserError

LOCK_NAME = ".lock"


class FolderBusyError(UserError, RuntimeError):
    """Another process holds the folder's lock; the message names the folder and its holder."""


@contextlib.contextmanager
def held_exclusively(folder: str, purpose: str) -> Iterator[None]:
    """Holds `folder`'s lock (creating the folder) for the block.

    Args:
      folder: a local folder, or a URL, which is not locked.
      purpose: what this process does there, for the holder's record ("training run").

    Raises:
      FolderBusyError: another process holds the lock.
    """
    if "://" in folder:
        yield
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    with open(path, "a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "another process"
            raise FolderBusyError(
                f"{folder} is in use by {holder}; wait for it to finish or use another folder."
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"a {purpose} (pid {os.getpid()})\n")
        lock_file.flush()
        try:
            yield
        finally:
            lock_file.truncate(0)
