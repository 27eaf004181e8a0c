"""The manifest of a TFRecord folder: which shards make up each split, and what they hold.

`training.prepare_imagenet` and `training.demo_data` write `manifest.json` next to the
shards once every shard is complete; `training.shard_set` holds the rules the shards
are checked by against it: by name and size before the pipeline reads them, and
completely (`describe_shard` of each) by ``python -m training.verify_data DIR``. The
file, schema version 1:

  {
    "schema_version": 1,
    "first_label": 1,                       stored label of classes[0]
    "classes": ["n01440764", ...],          class of stored label first_label + i
    "splits": {
      "train": [{"name": "train-00000-of-01024", "num_records": 1251,
                 "size_bytes": 143616512, "sha256": "9f86d0..."}, ...],
      "validation": [...]
    }
  }

`name` is relative to the folder, `size_bytes` and `sha256` are those of the file's
bytes, and `num_records` counts the records a TFRecord reader reads from it (every CRC
checked). The manifest is written under a temporary name and renamed, so a folder
either has a complete manifest or none; a folder without one is a conversion that did
not finish, or one written by other tools.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import tensorflow as tf

from lambda_keras.atomic_files import write_text_atomically
from lambda_keras.cli import UserError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
_READ_CHUNK_BYTES = 8 * 1024 * 1024


class ManifestError(UserError, ValueError):
    """A manifest is unreadable, malformed or of another schema version; the message names it."""


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One shard as written: its file name in the folder, record count, size and SHA-256."""

    name: str
    num_records: int
    size_bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The shards of each split and the label map of a TFRecord folder.

    Attributes:
      splits: split name -> its shards, in name order.
      classes: the class of stored label `first_label + i` is classes[i].
      first_label: the stored label of classes[0] (1 in the imagenet_to_gcs layout).
    """

    splits: Mapping[str, tuple[ShardInfo, ...]]
    classes: tuple[str, ...]
    first_label: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def shards(self) -> dict[str, ShardInfo]:
        """Every shard of every split, by file name."""
        return {shard.name: shard for shards in self.splits.values() for shard in shards}

    def to_json(self) -> str:
        return json.dumps({
            "schema_version": SCHEMA_VERSION,
            "first_label": self.first_label,
            "classes": list(self.classes),
            "splits": {
                split: [dataclasses.asdict(shard) for shard in shards]
                for split, shards in self.splits.items()
            },
        }, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> "Manifest":
        """Parses `to_json` output; `source` names the file in errors.

        Raises:
          ManifestError: not JSON, another schema version, or a field missing or of the
            wrong type.
        """
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ManifestError(f"{source!r} is not valid JSON: {error}.") from error
        version = values.get("schema_version") if isinstance(values, dict) else None
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"{source!r} has schema_version {version!r}; this version of lambda-keras reads "
                f"{SCHEMA_VERSION}."
            )
        try:
            splits = {
                str(split): tuple(_shard_info(shard) for shard in shards)
                for split, shards in values["splits"].items()
            }
            return cls(splits, tuple(str(name) for name in values["classes"]), int(values["first_label"]))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ManifestError(f"{source!r} is malformed: {error!r}.") from error


def _shard_info(values: dict[str, Any]) -> ShardInfo:
    shard = ShardInfo(**values)
    if not isinstance(shard.name, str) or not all(
        isinstance(value, int) for value in (shard.num_records, shard.size_bytes)
    ):
        raise ValueError(f"shard entry {values}")
    return shard


def manifest_path(directory: str) -> str:
    return os.path.join(directory, MANIFEST_NAME)


def read_manifest(directory: str) -> Manifest | None:
    """The manifest of a TFRecord folder, or None when it has none.

    Raises:
      ManifestError: the manifest exists but cannot be read or parsed.
    """
    path = manifest_path(directory)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as file:
        return Manifest.from_json(file.read(), path)


def write_manifest(directory: str, manifest: Manifest) -> str:
    """Writes `manifest` to directory/manifest.json atomically; returns the path."""
    path = manifest_path(directory)
    write_text_atomically(path, manifest.to_json())
    return path


def remove_manifest(directory: str) -> None:
    """Deletes directory/manifest.json, if any: its shard set is about to change."""
    if tf.io.gfile.exists(manifest_path(directory)):
        tf.io.gfile.remove(manifest_path(directory))


def describe_shard(path: str) -> ShardInfo:
    """Reads a shard completely: its record count (every CRC checked), size and SHA-256.

    Raises:
      tf.errors.DataLossError: a record is truncated or fails its CRC check (TensorFlow's
        message gives the byte offset; `verify_shards` adds the file).
    """
    digest = hashlib.sha256()
    size = 0
    with tf.io.gfile.GFile(path, "rb") as file:
        while chunk := file.read(_READ_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    num_records = int(tf.data.TFRecordDataset(path).reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
    return ShardInfo(os.path.basename(path), num_records, size, digest.hexdigest())


def describe_shards(paths: Sequence[str], num_workers: int = 8) -> list[ShardInfo]:
    """`describe_shard` of each path, read by `num_workers` threads, in the order given."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as pool:
        return list(pool.map(describe_shard, paths))
