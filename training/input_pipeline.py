"""The tf.data input pipeline for ImageNet-style classification.

One entry point, `build_dataset(config, split, input_context=None)`, for two sources,
each in its own module:

- "tfrecord" (`training.tfrecord_source`): shards in the TPU reference
  (`imagenet_to_gcs`) layout, local or `gs://`, with JPEG bytes under `image/encoded`
  and the class under `image/class/label` (1..1000 there, hence the default label
  offset of -1), listed and checked by `training.shard_set`;
- "tfds" (`training.tfds_source`): any TFDS image-classification dataset read with the
  JPEG bytes kept encoded, so both sources share the decode-and-crop preprocessing.

Pipeline (training): files, checked against the folder's manifest and sharded per
host -> shuffled -> parallel interleave of one reader per file, which parses each record
and reads its JPEG header, noting the records it could not read or parse and where
-> [cache] -> repeat -> shuffle -> a cheap parallel map that checks each record and
counts what was skipped -> drop those -> the parallel decode-crop-augment-normalise map,
fused with the batching that follows (drop_remainder) -> [Mixup/CutMix] -> prefetch.
Evaluation reads the same way without shuffling or repeating, deterministically; with
`pad_evaluation` its last steps are padded with weight-0 examples to whole batches. A
pass over a split's files without one usable record fails (`NO_USABLE_RECORDS`) instead
of skipping forever.

Nothing is lost silently: every record a file should hold is read or counted as skipped
(`SkippedRecordCounter`, per pass, each skip logged with the file and byte offset), and
every file a split should have is read or named in an error (`DataIntegrityError`) or,
with `skip_corrupt_records`, in a warning. See `shard_set.list_files` and
`tfrecord_source.read_file`.

Use with `strategy.distribute_datasets_from_function(lambda ctx: build_dataset(config,
"train", ctx))`: the batch is per replica and the files are split between hosts.
"""

from __future__ import annotations

import sys

import keras
import tensorflow as tf

from lambda_keras.data import preprocessing
from training import augmentation, record_stream, shard_set, tfds_source, tfrecord_source
from training.errors import ConfigError
from training.input_config import SPLITS, InputConfig


class SkippedRecordCounter:
    """Counts what the pipeline skipped: records in the current pass, and whole files.

    `count` is the number of records skipped since the current pass over the data began:
    the dataset resets it when an iterator over it starts, so each validation pass
    reports its own count (training is one endless pass). A record is skipped when
    - its image is missing or empty, not a JPEG, or truncated
      (`preprocessing.is_complete_jpeg`), or its JPEG header is damaged
      (`preprocessing.is_decodable_jpeg`);
    - it is not a tf.Example;
    - it cannot be read: a truncated record or a failed CRC check ends the reading of its
      file, and the records from there to the end of the file are skipped (their number
      comes from the folder's manifest; without one they count as 1).
    Each skip is logged to stderr with the file and the byte offset.

    `skipped_files` maps each file left out when the dataset was built (missing, of
    another size than the manifest says, not listed in it; see `shard_set.list_files`) to the
    reason; each was logged too.

    The count lives in an int64 tf.Variable that the dataset increments, so a trainer
    can read `count` between epochs or log `variable` as a metric. Create it outside
    `strategy.scope()` so that it is an ordinary host variable.
    """

    def __init__(self, name: str = "skipped_records") -> None:
        self.variable = tf.Variable(
            0, dtype=tf.int64, trainable=False, name=name,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        self.skipped_files: dict[str, str] = {}

    @property
    def count(self) -> int:
        return int(self.variable.numpy())

    def reset(self) -> None:
        self.variable.assign(0)


def per_replica_batch_size(
    global_batch_size: int, input_context: tf.distribute.InputContext | None
) -> int:
    """global_batch_size / replicas, with an error when it does not divide evenly."""
    if input_context is None:
        return global_batch_size
    replicas = input_context.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ConfigError(
            f"Global batch size {global_batch_size} is not divisible by the "
            f"{replicas} replicas in sync; choose a multiple of {replicas}."
        )
    return global_batch_size // replicas


def build_dataset(
    config: InputConfig,
    split: str,
    input_context: tf.distribute.InputContext | None = None,
    skipped_records: SkippedRecordCounter | None = None,
    pad_evaluation: bool = False,
) -> tf.data.Dataset:
    """Builds the batched input pipeline for one split.

    Args:
      config: the input configuration.
      split: "train" (augmented, shuffled, repeated forever, drop_remainder),
        "validation" or "minival" (evaluation preprocessing, one pass, in order).
      input_context: from `distribute_datasets_from_function`; selects this host's
        files and the per-replica batch size.
      skipped_records: counter for the records and files skipped as corrupt; when
        None a new one is created. It is attached to the result as
        `dataset.skipped_records`, and reset at the start of every pass.
      pad_evaluation: for "validation" and "minival" without eval_drop_remainder:
        pad the last batches with weight-0 examples so that every replica gets a
        full batch at every step and every host the same number of steps (see
        `_padded_to_whole_batches`); the elements then carry a third part, the
        float32 [batch] example weights (1 real, 0 padding), which Keras applies to
        the loss and the metrics. Strategies with several replicas need it: an
        empty per-replica batch fails in TensorFlow's kernels.

    Returns:
      A dataset of (images, labels):
        images: [batch, image_size, image_size, 3] in the Keras compute dtype
          (`keras.config.dtype_policy().compute_dtype`, e.g. bfloat16 on TPU),
          normalised with the ImageNet mean and standard deviation;
        labels: int32 [batch] class ids in [0, num_classes), or, for training with
          Mixup/CutMix, float32 [batch, num_classes] soft labels.
      batch is the per-replica batch size, global batch / replicas.

    Raises:
      DataIntegrityError, FileNotFoundError, ConfigError: see `shard_set.list_files`
        and `tfds_source`.
      When iterated, tf.errors.InvalidArgumentError whose message holds
      NO_USABLE_RECORDS: a whole pass over the split's files gave no usable record
      (`data_error_message` turns it into one line).
    """
    _check_split(split)
    training = split == "train"
    global_batch = config.global_batch_size if training else (
        config.eval_global_batch_size or config.global_batch_size
    )
    batch_size = per_replica_batch_size(global_batch, input_context)
    if skipped_records is None:
        skipped_records = SkippedRecordCounter()
    deterministic = not training or config.deterministic_train

    if config.source == "tfrecord":
        examples, files = tfrecord_source.read_examples(
            config, split, input_context, deterministic, skipped_records.skipped_files
        )
        source = config.data_dir
    else:
        examples, files = tfds_source.read_examples(config, split, input_context), 1
        source = f"TFDS {config.tfds_name}"
    if config.cache:
        examples = examples.cache()
    if training:
        examples = examples.repeat()
    # In pass order (before the shuffle): training repeats forever, and a pass without
    # one usable record would skip records forever without a batch.
    examples = _fail_on_a_pass_without_usable_records(examples, files, f"{split} split of {source}")
    if training:
        examples = examples.shuffle(config.shuffle_buffer_size, seed=config.seed)
    examples = _count_per_pass(examples, skipped_records)

    mix_batch = augmentation.build_mixup_cutmix(config) if training else None
    compute_dtype = keras.config.dtype_policy().compute_dtype
    # Mixup/CutMix blends in float32; the cast to the compute dtype follows it.
    example_dtype = tf.float32 if mix_batch is not None else compute_dtype
    preprocess_image = _image_preprocessor(config, training, example_dtype)

    def check(example):
        return example["image"], example["label"], example["source"], _check_record(
            config, skipped_records, example
        )

    def preprocess(image_bytes, stored_label, source, usable):
        del usable  # Always True after the filter.
        return _preprocess_record(config, preprocess_image, image_bytes, stored_label, source)

    # Checking and dropping before the expensive map lets tf.data fuse that map with
    # the batch (each image is written straight into the batch buffer). The check
    # counts the skips after the cache, so that every pass counts its own.
    dataset = examples.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.filter(lambda image_bytes, stored_label, source, usable: usable)
    dataset = dataset.map(
        preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    if training or config.eval_drop_remainder:
        dataset = dataset.batch(batch_size, drop_remainder=True)
    elif pad_evaluation:
        context = input_context or tf.distribute.InputContext()
        hosts_records = shard_set.records_per_host(config, split, context.num_input_pipelines)
        dataset = _padded_to_whole_batches(
            dataset, batch_size, batch_size * (context.num_replicas_in_sync // context.num_input_pipelines),
            max(hosts_records) if hosts_records else None,
        )
    else:
        dataset = dataset.batch(batch_size)

    if mix_batch is not None:
        def mix(images, labels):
            images, labels = mix_batch(images, labels)
            return tf.cast(images, compute_dtype), labels

        dataset = dataset.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    dataset = dataset.with_options(_dataset_options(deterministic, input_context))
    dataset.skipped_records = skipped_records
    return dataset


def _padded_to_whole_batches(
    examples: tf.data.Dataset, batch_size: int, host_batch_size: int, most_host_records: int | None
) -> tf.data.Dataset:
    """Evaluation batches that are all full: (images, labels, weights), weights 1 for
    the examples and 0 for the padding (zero images, label 0) after them.

    Args:
      examples: (image, label) elements, one pass.
      batch_size: per replica.
      host_batch_size: batch_size x this host's replicas: one step's examples.
      most_host_records: the most records any host reads (the manifest's), which fixes
        every host's number of steps, ceil(most / host_batch_size); a host with fewer
        pads more. None (no manifest): this host's own ceil(records / host_batch_size).

    Returns:
      Batches of [batch_size, ...], weights float32 [batch_size].
    """
    weighted = examples.map(lambda image, label: (image, label, tf.constant(1.0)))
    padding = tf.data.Dataset.from_tensors(
        tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), weighted.element_spec)
    ).repeat()
    if most_host_records is None:
        # n examples and host_batch_size - 1 padding make ceil(n / host_batch_size) whole steps.
        padded = weighted.concatenate(padding.take(host_batch_size - 1))
        padded = padded.batch(host_batch_size, drop_remainder=True).unbatch()
    else:
        steps = -(-most_host_records // host_batch_size)
        padded = weighted.concatenate(padding).take(steps * host_batch_size)
    return padded.batch(batch_size, drop_remainder=True)


NO_USABLE_RECORDS = "No usable record"


def _fail_on_a_pass_without_usable_records(
    examples: tf.data.Dataset, files: int, what: str
) -> tf.data.Dataset:
    """`examples` (passes over `files` files, in order, see `tfrecord_source.read_file`), failing from
    the end of a pass without one usable record on (a pass ends when its files have
    ended, each with an element whose "is_record" is False).

    The failure is a tf.debugging.Assert (tf.errors.InvalidArgumentError when the
    dataset is read) whose message starts with NO_USABLE_RECORDS and names `what`. It
    is sticky: every element after it fails too. A batch that follows fills each of
    its slots before it returns the error; were the failure only at the end of the
    pass, each slot would read a whole pass to reach it (measured: 94,500 skipped
    records before the error surfaced on the demo with batch 64, instead of 1,500).
    The scan that keeps the state never fails, so its state survives the error.
    """

    def count(state, example):
        files_ended, usable, failed = state
        files_ended += tf.cast(tf.logical_not(example["is_record"]), tf.int64)
        usable += tf.cast(tf.logical_and(example["is_record"], example["decodable"]), tf.int64)
        pass_ended = files_ended >= files
        failed = tf.logical_or(failed, tf.logical_and(pass_ended, tf.equal(usable, 0)))
        zero = tf.zeros_like(usable)
        state = (tf.where(pass_ended, zero, files_ended), tf.where(pass_ended, zero, usable), failed)
        return state, (example, failed)

    def check(example, failed):
        check_usable = tf.debugging.Assert(tf.logical_not(failed), [
            f"{NO_USABLE_RECORDS} in a whole pass over the {what}: every record was skipped (images missing, "
            "not JPEG or truncated, or records without the features input.image_key and input.label_key name)"
        ])
        with tf.control_dependencies([check_usable]):
            return tf.nest.map_structure(tf.identity, example)

    zero = tf.constant(0, tf.int64)
    return examples.scan((zero, zero, tf.constant(False)), count).map(check)


def data_error_message(error: tf.errors.OpError) -> str | None:
    """The one-line message for a data error that stopped a pass over a dataset of
    `build_dataset`, or None for any other error.

    Recognised: NO_USABLE_RECORDS, a corrupt record with skip_corrupt_records=False,
    a label outside [0, num_classes).
    """
    text = error.message
    for marker in (NO_USABLE_RECORDS, "Corrupt record(s):", "Label out of range"):
        start = text.find(marker)
        if start >= 0:
            # tf.debugging.Assert writes its data as "[part] [part] ...", then, on its
            # own lines, where it ran.
            line = text[start:].splitlines()[0]
            return " ".join(line.replace("] [", " ").rstrip("]").split())
    return None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")


def _count_per_pass(examples: tf.data.Dataset, skipped_records: SkippedRecordCounter) -> tf.data.Dataset:
    """`examples`, resetting `skipped_records` whenever an iterator over them starts.

    A one-element dataset whose map resets the counter is flat-mapped into
    `examples`, so the reset runs before the first example of every pass is read.
    """

    def reset(zero):
        with tf.control_dependencies([skipped_records.variable.assign(zero)]):
            return tf.identity(zero)

    start = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).map(reset)
    return start.flat_map(lambda _: examples)


def _image_preprocessor(config: InputConfig, training: bool, dtype):
    """The per-image function: JPEG bytes -> [image_size, image_size, 3] of `dtype`."""
    if not training:
        return lambda image_bytes: preprocessing.preprocess_for_eval(
            image_bytes, config.image_size, config.eval_crop_padding, dtype,
            interpolation=config.eval_interpolation, resize_first=config.eval_resize_first,
        )
    augment_fn = augmentation.build_randaugment(config)
    return lambda image_bytes: preprocessing.preprocess_for_train(
        image_bytes,
        config.image_size,
        area_range=config.crop_area_range,
        aspect_ratio_range=config.crop_aspect_ratio_range,
        max_attempts=config.crop_max_attempts,
        crop_padding=config.eval_crop_padding,
        random_flip=config.random_flip,
        augment_fn=augment_fn,
        dtype=dtype,
    )


def _check_record(
    config: InputConfig,
    skipped_records: SkippedRecordCounter,
    example: dict[str, tf.Tensor],
) -> tf.Tensor:
    """Whether an example is a usable record (bool []), without decoding its image.

    Counts and logs what was skipped: the example's "skipped" records lost just before
    it in its file (see `tfrecord_source.read_file`), plus the example itself when its image is
    missing, not a JPEG or truncated (not "decodable"). The filter that follows drops
    unusable examples and every end-of-file element. With skip_corrupt_records=False
    any skip raises instead, naming the file.
    """
    is_record = example["is_record"]
    incomplete = tf.logical_and(is_record, tf.logical_not(example["decodable"]))
    skipped = example["skipped"] + tf.cast(incomplete, tf.int64)
    usable = tf.logical_and(is_record, tf.logical_not(incomplete))

    def problem():
        return record_stream.join_problems(
            example["problem"],
            tf.strings.join([example["source"], ": a record's image is missing, not a JPEG or truncated"]),
            example["skipped"] > 0, incomplete,
        )

    def fail():
        check_records = tf.debugging.Assert(
            False, ["Corrupt record(s):", problem(), "(skip_corrupt_records=False)."]
        )
        with tf.control_dependencies([check_records]):
            return tf.identity(usable)

    def count_skips():
        count = skipped_records.variable.assign_add(skipped)
        log = tf.print(
            "WARNING: skipping", skipped, "record(s):", problem(), "- skipped so far in this pass:", count,
            output_stream=sys.stderr,
        )
        with tf.control_dependencies([log]):
            return tf.identity(usable)

    return tf.cond(skipped > 0, count_skips if config.skip_corrupt_records else fail, lambda: usable)


def _preprocess_record(
    config: InputConfig,
    preprocess_image,
    image_bytes: tf.Tensor,
    stored_label: tf.Tensor,
    source: tf.Tensor,
):
    """(image [image_size, image_size, 3], label int32 []) of a checked record.

    Raises (when the dataset runs) if the label, after the offset, is outside
    [0, num_classes).
    """
    label_offset = config.resolved_label_offset
    label = tf.cast(stored_label + label_offset, tf.int32)
    in_range = tf.logical_and(label >= 0, label < config.num_classes)
    check_label = tf.debugging.Assert(
        in_range,
        [
            "Label out of range: stored label", stored_label,
            f"with label_offset {label_offset} is not in [0, {config.num_classes})"
            " (num_classes) in", source,
        ],
    )
    with tf.control_dependencies([check_label]):
        return preprocess_image(image_bytes), label


def _dataset_options(
    deterministic: bool, input_context: tf.distribute.InputContext | None
) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    # Each map call runs single-threaded; parallelism comes from num_parallel_calls.
    # This avoids oversubscribing the host's cores (the TPU reference setting).
    options.threading.max_intra_op_parallelism = 1
    if input_context is not None:
        # The files are already split between hosts in `shard_set.list_files` (or by TFDS's
        # ReadConfig); tf.distribute must not shard a second time.
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
    return options
