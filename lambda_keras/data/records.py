"""The ImageNet TFRecord schema: the tf.Example layout of `imagenet_to_gcs` shards.

The one place that defines how an image and its label are stored: `image_example` and
`write_records_atomically` write records (`training.prepare_imagenet`,
`training.demo_data`), `parse_example` reads them back (`training.tfrecord_source`), and
`shard_name` / `parse_shard_name` name the files (the rules over a folder's set of
shards are `training.shard_set`'s). One record per image:

  image/encoded (JPEG bytes), image/class/label (int64, 1..N in the reference),
  image/class/synset, image/height, image/width, image/channels (3),
  image/colorspace ("RGB"), image/format ("JPEG"), image/filename.

`training.input_config.InputConfig` repeats the two keys it reads as plain strings
(its `image_key` / `label_key` defaults), because importing this module would import
TensorFlow and Keras into that configuration module, which stays free of both.

A file is framed as TFRecords: per record an 8-byte length, a 4-byte CRC of the length,
the serialized tf.Example and a 4-byte CRC of it (`RECORD_FRAMING_BYTES` in all), so the
pipeline can name the byte offset at which a damaged file stops being readable.
"""

from __future__ import annotations

import re
from typing import Iterable

import tensorflow as tf

from lambda_keras.atomic_files import written_atomically
from lambda_keras.cli import UserError
from lambda_keras.data import preprocessing

IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
SYNSET_KEY = "image/class/synset"
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
CHANNELS_KEY = "image/channels"
COLORSPACE_KEY = "image/colorspace"
FORMAT_KEY = "image/format"
FILENAME_KEY = "image/filename"

# Why `undecodable_images` names a record that the training reader would skip unread.
_NOT_A_JPEG = "not a complete JPEG with a readable header"

# Bytes a record takes in a file besides its serialized tf.Example: length, two CRCs.
RECORD_FRAMING_BYTES = 16

_SHARD_NAME = re.compile(r"(?P<split>.+)-(?P<index>\d{5})-of-(?P<num_shards>\d{5})")


class ShardSetError(UserError, ValueError):
    """A writer refuses to change a folder's shard set: shards of another count or plan
    are there (`training.shard_set.check_one_shard_set_to_write`), or an argument would
    give an unusable set."""


def shard_name(split: str, index: int, num_shards: int) -> str:
    """The reference shard file name, e.g. train-00012-of-01024."""
    return f"{split}-{index:05d}-of-{num_shards:05d}"


def parse_shard_name(name: str) -> tuple[str, int, int] | None:
    """(split, index, num_shards) of a `shard_name`, or None for any other file name."""
    match = _SHARD_NAME.fullmatch(name)
    if match is None:
        return None
    return match["split"], int(match["index"]), int(match["num_shards"])


def image_example(
    jpeg_bytes: bytes, label: int, synset: str, height: int, width: int, file_name: str
) -> tf.train.Example:
    """A tf.Example with the imagenet_to_gcs feature keys for one RGB JPEG."""

    def bytes_feature(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int_feature(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    return tf.train.Example(features=tf.train.Features(feature={
        IMAGE_KEY: bytes_feature(jpeg_bytes),
        LABEL_KEY: int_feature(label),
        SYNSET_KEY: bytes_feature(synset.encode()),
        HEIGHT_KEY: int_feature(height),
        WIDTH_KEY: int_feature(width),
        CHANNELS_KEY: int_feature(3),
        COLORSPACE_KEY: bytes_feature(b"RGB"),
        FORMAT_KEY: bytes_feature(b"JPEG"),
        FILENAME_KEY: bytes_feature(file_name.encode()),
    }))


def parse_spec(image_key: str = IMAGE_KEY, label_key: str = LABEL_KEY) -> dict[str, tf.io.FixedLenFeature]:
    """The features the input pipeline reads: the image bytes ("" when missing) and the
    label (-1 when missing), so that a record without them is dropped or flagged later
    instead of failing the parse."""
    return {
        image_key: tf.io.FixedLenFeature([], tf.string, default_value=""),
        label_key: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    }


def parse_example(
    serialized: tf.Tensor, image_key: str = IMAGE_KEY, label_key: str = LABEL_KEY
) -> tuple[tf.Tensor, tf.Tensor]:
    """(image bytes: scalar tf.string, stored label: scalar tf.int64) of one serialized
    tf.Example, parsed with `parse_spec(image_key, label_key)`."""
    features = tf.io.parse_single_example(serialized, parse_spec(image_key, label_key))
    return features[image_key], features[label_key]


def undecodable_images(path: str) -> list[str]:
    """One line per record of the shard at `path` whose image does not decode completely,
    or is not a complete JPEG (`preprocessing.is_decodable_jpeg`, which the training
    reader checks before decoding), naming the record's index and image/filename.

    The input pipeline reads only JPEG headers before batching; a JPEG whose header is
    sound but whose scan data holds a bogus marker fails only when it is decoded. Most
    other damage to scan data decodes, to wrong pixels, here as in any JPEG decoder.
    """
    spec = {**parse_spec(), FILENAME_KEY: tf.io.FixedLenFeature([], tf.string, default_value="")}
    serialized = tf.data.TFRecordDataset(path)

    def decodes(index, record):
        image_bytes = tf.io.parse_single_example(record, spec)[IMAGE_KEY]
        # What the training reader drops before decoding fails here too.
        check = tf.debugging.Assert(preprocessing.is_decodable_jpeg(image_bytes), [_NOT_A_JPEG])
        with tf.control_dependencies([check]):
            image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        return index, tf.shape(image)  # the shape keeps the decode from being pruned

    # The decodes run in the graph, in parallel; the few records that fail are redone
    # eagerly to report TensorFlow's reason.
    decoded = serialized.enumerate().map(decodes, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    decoded_indices = tf.constant(sorted(int(index) for index, _ in decoded.as_numpy_iterator()), tf.int64)
    failed = serialized.enumerate().filter(
        lambda index, record: tf.logical_not(tf.reduce_any(tf.equal(decoded_indices, index))))
    problems = []
    for index, record in failed:
        features = tf.io.parse_single_example(record, spec)
        try:
            if not preprocessing.is_decodable_jpeg(features[IMAGE_KEY]):
                raise tf.errors.InvalidArgumentError(None, None, _NOT_A_JPEG)
            tf.io.decode_image(features[IMAGE_KEY], channels=3, expand_animations=False)
            reason = "it failed in the graph only"
        except tf.errors.InvalidArgumentError as error:
            reason = error.message.splitlines()[0]
        name = features[FILENAME_KEY].numpy().decode(errors="replace") or "no image/filename"
        problems.append(f"{path}: record {int(index)} ({name}): its image does not decode ({reason})")
    return problems


def write_records_atomically(path: str, records: Iterable[bytes]) -> int:
    """Writes serialized records to `path` via a temporary file and a rename.

    The file under `path` appears only once all records are written; on any error the
    temporary file (`lambda_keras.atomic_files.temporary_path`) is removed. Returns the number of records written.
    """
    count = 0
    with written_atomically(path) as temp_path, tf.io.TFRecordWriter(temp_path) as writer:
        for record in records:
            writer.write(record)
            count += 1
    return count
