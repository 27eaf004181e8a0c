"""The "tfrecord" source of the input pipeline: the examples of a split's TFRecord files.

`read_examples` lists this host's files (`training.shard_set.list_shards`, which checks
them against the folder's manifest) and interleaves one reader per file (`read_file`).
Each reader parses a record's tf.Example (`lambda_keras.data.records.parse_example`)
and reads its JPEG header, and accounts for every record the file should hold: a record
it could not read or parse is counted, with the byte offset where it started
(`training.record_stream`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from lambda_keras.data import preprocessing, records
from training import record_stream, shard_set
from training.input_config import InputConfig

_TFRECORD_READ_BUFFER_BYTES = 8 * 1024 * 1024


def read_examples(
    config: InputConfig,
    split: str,
    input_context: tf.distribute.InputContext | None,
    deterministic: bool,
    skipped_files: dict[str, str],
) -> tuple[tf.data.Dataset, int]:
    """(The examples (see `read_file`) of this host's checked files, interleaved; the
    number of files). Files left out by skip_corrupt_records go into `skipped_files`.

    Raises:
      DataIntegrityError, FileNotFoundError, ConfigError: see `shard_set.list_files`.
    """
    shards = shard_set.list_shards(config, split, input_context, skipped_files)
    file_names = tf.data.Dataset.from_tensor_slices((
        [shard.path for shard in shards],
        np.array([shard.size_bytes for shard in shards], np.int64),
        np.array([shard.num_records for shard in shards], np.int64),
    ))
    if split == "train":
        # Reshuffled at every repetition (the repeat comes later in the pipeline).
        file_names = file_names.shuffle(len(shards), seed=config.seed)
    return file_names.interleave(
        lambda path, size_bytes, num_records: read_file(config, path, size_bytes, num_records),
        cycle_length=min(config.interleave_cycle_length, len(shards)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    ), len(shards)


def read_file(
    config: InputConfig, path: tf.Tensor, size_bytes: tf.Tensor, num_records: tf.Tensor
) -> tf.data.Dataset:
    """The examples of one TFRecord file, then its end-of-file element.

    An example is a dict: "image" (JPEG bytes, scalar tf.string), "label" (the stored
    label, int64 []), "source" (the file), "is_record" (False for the end-of-file
    element), "decodable" (`preprocessing.is_decodable_jpeg` of the image), "skipped"
    (int64 [], records lost just before this element) and "problem" (tf.string [], what
    they were and where; "" when none were).

    A record is lost when it is not a tf.Example or its JPEG header is damaged (the
    parse raises, ignore_errors drops it, and the gap in record indices counts it), or
    when it cannot be read: on a truncated record or a failed CRC check TFRecordDataset
    moves on to its next file, which for this one-file reader is the end. The
    end-of-file element compares what was read with the file's size and, from a
    manifest, its record count (`num_records`, -1 without one), and counts the rest.
    """
    framed = tf.data.TFRecordDataset(path, buffer_size=_TFRECORD_READ_BUFFER_BYTES).ignore_errors()
    located = record_stream.locate(
        framed, lambda serialized: tf.cast(tf.strings.length(serialized), tf.int64) + records.RECORD_FRAMING_BYTES
    )

    def parse(element):
        image, stored_label = records.parse_example(element["element"], config.image_key, config.label_key)
        return {
            "image": image, "label": stored_label, "decodable": preprocessing.is_decodable_jpeg(image),
            **{key: element[key] for key in ("is_record", "index", "offset", "end")},
        }

    def describe(batch, skipped, skipped_from):
        # Only the end-of-file element knows how far the reader got.
        records_read, bytes_read = batch["index"], batch["offset"]
        unread = tf.where(
            num_records >= 0,
            tf.maximum(num_records - records_read, 0),
            tf.cast(bytes_read < size_bytes, tf.int64),
        )
        unread = tf.where(batch["is_record"], tf.zeros_like(unread), unread)

        def problems():
            gap_problem = tf.strings.join([
                path, ": ", tf.strings.as_string(skipped), " record(s) from byte ",
                tf.strings.as_string(skipped_from), " are not tf.Examples or hold a JPEG with a damaged header",
            ])
            expected = tf.where(num_records >= 0, tf.strings.as_string(num_records), "an unknown number of")
            unread_problem = tf.strings.join([
                path, ": unreadable from byte ", tf.strings.as_string(bytes_read), " of ",
                tf.strings.as_string(size_bytes), " (a truncated record, a failed CRC check or a read error); read ",
                tf.strings.as_string(records_read), " of ", expected, " records",
            ])
            return record_stream.join_problems(gap_problem, unread_problem, skipped > 0, unread > 0)

        return {
            "image": batch["image"], "label": batch["label"], "source": tf.fill(tf.shape(skipped), path),
            "is_record": batch["is_record"], "decodable": batch["decodable"], "skipped": skipped + unread,
            "problem": tf.cond(
                tf.reduce_any(skipped + unread > 0), problems, lambda: tf.fill(tf.shape(skipped), "")
            ),
        }

    return record_stream.count_gaps(located.map(parse).ignore_errors(), describe)
