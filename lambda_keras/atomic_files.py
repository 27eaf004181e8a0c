"""Files that are never half-written: each is written under a temporary name beside it,
then renamed over it.

A rename within a folder is atomic on POSIX file systems, and on an object store
(gs://) the object appears only once complete, so a reader sees the old file or the new
one, never part of one. The temporary names carry `TEMP_MARKER`, which no reader's file
pattern matches; `remove_temporary_files` clears what a killed writer left behind. Every
writer of the package goes through here: shards and manifests, config.yaml, results
and logs, checkpoints and converted weights. (Folders, such as an export's version or
a preset, are staged and renamed by their writers.)
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator

import tensorflow as tf

TEMP_MARKER = ".tmp-"


def temporary_path(path: str, suffix: str = "") -> str:
    """A unique name beside `path` to write it under, ending in `suffix` (Keras
    chooses a saving format by the file's suffix, e.g. ".keras")."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{TEMP_MARKER}{name}-{uuid.uuid4().hex}{suffix}")


def remove_temporary_files(directory: str) -> int:
    """Deletes the files an interrupted writer left half-written in `directory`; returns how many."""
    stale = [name for name in tf.io.gfile.listdir(directory) if TEMP_MARKER in name]
    for name in stale:
        tf.io.gfile.remove(os.path.join(directory, name))
    return len(stale)


@contextlib.contextmanager
def written_atomically(path: str, suffix: str = "") -> Iterator[str]:
    """A temporary path beside `path` (see `temporary_path`) to write; renamed over
    `path` when the block ends without an error, removed when it raises, so `path` is
    never half-written."""
    temp_path = temporary_path(path, suffix)
    try:
        yield temp_path
        tf.io.gfile.rename(temp_path, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(temp_path):
            tf.io.gfile.remove(temp_path)
        raise


def write_text_atomically(path: str, text: str) -> None:
    """Writes `text` (UTF-8) to `path` (local or gs://) through `written_atomically`."""
    with written_atomically(path) as temp_path, tf.io.gfile.GFile(temp_path, "w") as file:
        file.write(text)
