"""Where each element of a record stream came from, and which elements were lost.

Both sources of the input pipeline (`training.tfrecord_source`, `training.tfds_source`)
read a stream whose elements can be dropped along the way (a record that is not a
tf.Example, a JPEG with a damaged header): `locate` numbers the elements and places them
(byte offsets in a file, or example numbers) and marks the end of the stream, and
`count_gaps`, after the drops, counts how many elements are missing before each
survivor and where they started, so that every lost record is counted and named.
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

# Records are numbered and their gaps counted a batch at a time: a tf.data function
# call per record costs more than this bookkeeping (docs/design.md, "Checking the shards").
ACCOUNTING_BATCH = 32


def locate(elements: tf.data.Dataset, size_of: Callable[[Any], tf.Tensor]) -> tf.data.Dataset:
    """Numbers and places the elements of a stream, then marks its end.

    Each element becomes {"element": the element, "is_record": True, "index": its
    number, "offset": the sum of `size_of` over the elements before it, "end": offset
    plus its own size}; `size_of` maps a batch of elements to int64 [batch] sizes. One
    end-of-stream element follows: "is_record" False, "element" zeros, "index" the
    number of elements and "offset" and "end" their total size.
    """
    batches = elements.batch(ACCOUNTING_BATCH)
    # An empty batch marks the end.
    batches = batches.concatenate(tf.data.Dataset.from_tensors(tf.nest.map_structure(
        lambda spec: tf.zeros([0, *spec.shape[1:]], spec.dtype), batches.element_spec
    )))

    def place(state, batch):
        count, offset = state
        sizes = size_of(batch)
        ends = offset + tf.math.cumsum(sizes)
        size = tf.shape(sizes, out_type=tf.int64)[0]

        def located():
            return {
                "element": batch, "is_record": tf.fill([size], True), "index": count + tf.range(size),
                "offset": ends - sizes, "end": ends,
            }

        def end_of_stream():
            return {
                "element": tf.nest.map_structure(lambda part: tf.zeros([1, *part.shape[1:]], part.dtype), batch),
                "is_record": tf.constant([False]), "index": tf.stack([count]), "offset": tf.stack([offset]),
                "end": tf.stack([offset]),
            }

        return (count + size, offset + tf.reduce_sum(sizes)), tf.cond(tf.equal(size, 0), end_of_stream, located)

    return batches.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), place).unbatch()


def count_gaps(
    elements: tf.data.Dataset, describe: Callable[[dict[str, tf.Tensor], tf.Tensor, tf.Tensor], Any]
) -> tf.data.Dataset:
    """`describe(batch, skipped, skipped_from)` of the elements, unbatched.

    `elements` come in "index" order, some dropped: `skipped` (int64 [batch]) is the
    number of indices missing just before each element, and `skipped_from` the "end"
    of the element before them (where the first missing one starts).
    """

    def count(state, batch):
        next_index, previous_end = state
        index, end = batch["index"], batch["end"]
        skipped = index - tf.concat([[next_index], index[:-1] + 1], 0)
        skipped_from = tf.concat([[previous_end], end[:-1]], 0)
        return (index[-1] + 1, end[-1]), describe(batch, skipped, skipped_from)

    batches = elements.batch(ACCOUNTING_BATCH)
    return batches.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), count).unbatch()


def join_problems(first: tf.Tensor, second: tf.Tensor, has_first: tf.Tensor, has_second: tf.Tensor) -> tf.Tensor:
    """The problems (tf.string) that are present (tf.bool, same shape), joined by "; "."""
    both = tf.strings.join([first, "; ", second])
    return tf.where(has_first, tf.where(has_second, both, first), tf.where(has_second, second, ""))
