"""The ImageNet TFRecord schema: the tf.Example layout of `imagenet_to_gcs` shards.

The one place that defines how an image and its label are stored: `image_example` and
`write_records_atomically` write records (`training.prepare_imagenet`,
`training.demo_data`), `parse_example` reads them back (`training.input_pipeline`), and
`shard_name` names the files. One record per image:

  image/encoded (JPEG bytes), image/class/label (int64, 1..N in the reference),
  image/class/synset, image/height, image/width, image/channels (3),
  image/colorspace ("RGB"), image/format ("JPEG"), image/filename.

`training.input_config.InputConfig` repeats the two keys it reads as plain strings
(its `image_key` / `label_key` defaults), because importing this module would import
TensorFlow and Keras into that configuration module, which stays free of both.
"""

from __future__ import annotations

import uuid
from typing import Iterable

import tensorflow as tf

IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
SYNSET_KEY = "image/class/synset"
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
CHANNELS_KEY = "image/channels"
COLORSPACE_KEY = "image/colorspace"
FORMAT_KEY = "image/format"
FILENAME_KEY = "image/filename"

# Marks a shard being written; a file name containing it is never a complete shard.
TEMP_MARKER = ".tmp-"


def shard_name(split: str, index: int, num_shards: int) -> str:
    """The reference shard file name, e.g. train-00012-of-01024."""
    return f"{split}-{index:05d}-of-{num_shards:05d}"


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


def write_records_atomically(path: str, records: Iterable[bytes]) -> int:
    """Writes serialized records to `path` via a temporary file and a rename.

    The file under `path` appears only once all records are written; on any error the
    temporary file is removed. Returns the number of records written.
    """
    temp_path = f"{path}{TEMP_MARKER}{uuid.uuid4().hex}"
    count = 0
    try:
        with tf.io.TFRecordWriter(temp_path) as writer:
            for record in records:
                writer.write(record)
                count += 1
        tf.io.gfile.rename(temp_path, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(temp_path):
            tf.io.gfile.remove(temp_path)
        raise
    return count
