"""The tf.data input pipeline for ImageNet-style classification.

One entry point, `build_dataset(config, split, input_context=None)`, for two sources:

- "tfrecord": shards in the TPU reference (`imagenet_to_gcs`) layout, local or `gs://`,
  with JPEG bytes under `image/encoded` and the class under `image/class/label`
  (1..1000 there, hence the default label offset of -1), parsed by
  `lambda_keras.data.records`;
- "tfds": any TFDS image-classification dataset read with the JPEG bytes kept encoded
  (`SkipDecoding`), so both sources share the decode-and-crop preprocessing.

Pipeline (training): files, sharded per host -> shuffled -> parallel interleave of
TFRecord readers -> [cache] -> repeat -> shuffle -> a cheap parallel map that checks
each record -> drop records with a missing or corrupt image (counted) -> the parallel
decode-crop-augment-normalise map, fused with the batching that follows
(drop_remainder) -> [Mixup/CutMix] -> prefetch. Evaluation reads the same way
without shuffling or repeating, deterministically.

Use with `strategy.distribute_datasets_from_function(lambda ctx: build_dataset(config,
"train", ctx))`: the batch is per replica and the files are split between hosts.
"""

from __future__ import annotations

import os
import sys

import keras
import tensorflow as tf

from lambda_keras.data import preprocessing, records
from training import augmentation
from training.input_config import SPLITS, InputConfig

_TFRECORD_READ_BUFFER_BYTES = 8 * 1024 * 1024


class SkippedRecordCounter:
    """Counts the records the pipeline skipped because their image was unusable.

    A record is skipped when its image key is missing or empty, the bytes are not a
    JPEG, or the JPEG is truncated (see `preprocessing.is_complete_jpeg`). Each skip is
    also logged to stderr with the file it came from.

    The count lives in an int64 tf.Variable that the dataset increments, so a trainer
    can read `count` between epochs or log `variable` as a metric. Create it outside
    `strategy.scope()` so that it is an ordinary host variable.
    """

    def __init__(self, name: str = "skipped_records") -> None:
        self.variable = tf.Variable(
            0, dtype=tf.int64, trainable=False, name=name,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

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
        raise ValueError(
            f"Global batch size {global_batch_size} is not divisible by the "
            f"{replicas} replicas in sync; choose a multiple of {replicas}."
        )
    return global_batch_size // replicas


def list_files(
    config: InputConfig,
    split: str,
    input_context: tf.distribute.InputContext | None = None,
) -> list[str]:
    """The TFRecord files this host reads for `split`, sorted by name.

    "train" and "minival" share `train_file_pattern`: minival is the last
    `minival_num_shards` files and train the rest. With an `input_context`, host i of
    n reads files i, i+n, i+2n, ..., so the hosts together read every file once.

    Raises:
      FileNotFoundError: `data_dir` does not exist or the pattern matches nothing
        (the message names the pattern).
      ValueError: bad split, too few files to hold out or to share between hosts.
    """
    _check_split(split)
    if not tf.io.gfile.isdir(config.data_dir):
        raise FileNotFoundError(
            f"Input data_dir {config.data_dir!r} does not exist or is not a directory."
        )
    pattern = config.eval_file_pattern if split == "validation" else config.train_file_pattern
    full_pattern = os.path.join(config.data_dir, pattern)
    files = sorted(tf.io.gfile.glob(full_pattern))
    if not files:
        raise FileNotFoundError(
            f"No TFRecord files match {full_pattern!r} (split {split!r})."
        )
    if split != "validation" and config.minival_num_shards:
        if config.minival_num_shards >= len(files):
            raise ValueError(
                f"minival_num_shards={config.minival_num_shards} leaves no training "
                f"files: {full_pattern!r} matches only {len(files)}."
            )
        held_out = len(files) - config.minival_num_shards
        files = files[held_out:] if split == "minival" else files[:held_out]
    elif split == "minival":
        raise ValueError(
            'Split "minival" needs minival_num_shards > 0 (the paper held out 20 of '
            "1024 training shards)."
        )
    if input_context is not None and input_context.num_input_pipelines > 1:
        pipelines = input_context.num_input_pipelines
        if len(files) < pipelines:
            raise ValueError(
                f"{len(files)} files for split {split!r} cannot be shared between "
                f"{pipelines} input pipelines (hosts); write more shards."
            )
        files = files[input_context.input_pipeline_id :: pipelines]
    return files


def build_dataset(
    config: InputConfig,
    split: str,
    input_context: tf.distribute.InputContext | None = None,
    skipped_records: SkippedRecordCounter | None = None,
) -> tf.data.Dataset:
    """Builds the batched input pipeline for one split.

    Args:
      config: the input configuration.
      split: "train" (augmented, shuffled, repeated forever, drop_remainder),
        "validation" or "minival" (evaluation preprocessing, one pass, in order).
      input_context: from `distribute_datasets_from_function`; selects this host's
        files and the per-replica batch size.
      skipped_records: counter for records skipped as corrupt; when None a new one
        is created and attached to the result as `dataset.skipped_records`.

    Returns:
      A dataset of (images, labels):
        images: [batch, image_size, image_size, 3] in the Keras compute dtype
          (`keras.config.dtype_policy().compute_dtype`, e.g. bfloat16 on TPU),
          normalised with the ImageNet mean and standard deviation;
        labels: int32 [batch] class ids in [0, num_classes), or, for training with
          Mixup/CutMix, float32 [batch, num_classes] soft labels.
      batch is the per-replica batch size, global batch / replicas.
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
        examples = _read_tfrecords(config, split, input_context, deterministic)
    else:
        examples = _read_tfds(config, split, input_context)
    if config.cache:
        examples = examples.cache()
    if training:
        examples = examples.repeat().shuffle(config.shuffle_buffer_size, seed=config.seed)

    mix_batch = augmentation.build_mixup_cutmix(config) if training else None
    compute_dtype = keras.config.dtype_policy().compute_dtype
    # Mixup/CutMix blends in float32; the cast to the compute dtype follows it.
    example_dtype = tf.float32 if mix_batch is not None else compute_dtype
    preprocess_image = _image_preprocessor(config, training, example_dtype)

    def check(image_bytes, stored_label, source):
        usable = _check_record(config, skipped_records, image_bytes, source)
        return image_bytes, stored_label, source, usable

    def preprocess(image_bytes, stored_label, source, usable):
        del usable  # Always True after the filter.
        return _preprocess_record(config, preprocess_image, image_bytes, stored_label, source)

    # Checking and dropping before the expensive map lets tf.data fuse that map with
    # the batch (each image is written straight into the batch buffer).
    dataset = examples.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.filter(lambda image_bytes, stored_label, source, usable: usable)
    dataset = dataset.map(
        preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    dataset = dataset.batch(
        batch_size, drop_remainder=training or config.eval_drop_remainder
    )

    if mix_batch is not None:
        def mix(images, labels):
            images, labels = mix_batch(images, labels)
            return tf.cast(images, compute_dtype), labels

        dataset = dataset.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    dataset = dataset.with_options(_dataset_options(deterministic, input_context))
    dataset.skipped_records = skipped_records
    return dataset


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")


def _read_tfrecords(
    config: InputConfig,
    split: str,
    input_context: tf.distribute.InputContext | None,
    deterministic: bool,
) -> tf.data.Dataset:
    """(JPEG bytes, stored label, file name) per record, from this host's files."""
    files = list_files(config, split, input_context)
    file_names = tf.data.Dataset.from_tensor_slices(files)
    if split == "train":
        # Reshuffled at every repetition (the repeat comes later in the pipeline).
        file_names = file_names.shuffle(len(files), seed=config.seed)

    def read_file(file_name):
        def parse(serialized):
            image_bytes, stored_label = records.parse_example(serialized, config.image_key, config.label_key)
            return image_bytes, stored_label, file_name

        return tf.data.TFRecordDataset(
            file_name, buffer_size=_TFRECORD_READ_BUFFER_BYTES
        ).map(parse)

    return file_names.interleave(
        read_file,
        cycle_length=min(config.interleave_cycle_length, len(files)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )


def _read_tfds(
    config: InputConfig,
    split: str,
    input_context: tf.distribute.InputContext | None,
) -> tf.data.Dataset:
    """(JPEG bytes, stored label, dataset name) per example of a TFDS dataset."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    split_name = {
        "train": config.tfds_train_split,
        "validation": config.tfds_eval_split,
        "minival": config.tfds_minival_split,
    }[split]
    if split_name is None:
        raise ValueError(
            'Split "minival" of a TFDS source needs tfds_minival_split, e.g. '
            '"train[98%:]" with tfds_train_split="train[:98%]".'
        )
    builder = tfds.builder(config.tfds_name, data_dir=config.tfds_data_dir)
    if config.tfds_prepare or config.tfds_manual_dir:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=config.tfds_manual_dir
            )
        )
    read_config = tfds.ReadConfig(
        input_context=input_context,
        interleave_cycle_length=config.interleave_cycle_length,
        shuffle_seed=config.seed,
        # Caching and prefetching are this pipeline's decisions.
        try_autocache=False,
        skip_prefetch=True,
    )
    examples = builder.as_dataset(
        split=split_name,
        shuffle_files=split == "train",
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=read_config,
    )
    source = f"{config.tfds_name}:{split_name}"
    return examples.map(lambda example: (example["image"], example["label"], source))


def _image_preprocessor(config: InputConfig, training: bool, dtype):
    """The per-image function: JPEG bytes -> [image_size, image_size, 3] of `dtype`."""
    if not training:
        return lambda image_bytes: preprocessing.preprocess_for_eval(
            image_bytes, config.image_size, config.eval_crop_padding, dtype
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
    image_bytes: tf.Tensor,
    source: tf.Tensor,
) -> tf.Tensor:
    """Whether a record's image is usable (bool []), without decoding it.

    An unusable record (missing, non-JPEG or truncated image) is counted and logged;
    the filter that follows drops it. With skip_corrupt_records=False it raises
    instead.
    """
    usable = preprocessing.is_complete_jpeg(image_bytes)
    if not config.skip_corrupt_records:
        check_image = tf.debugging.Assert(
            usable,
            [
                "Corrupt record: the image is missing, not a JPEG or truncated in",
                source, "(skip_corrupt_records=False).",
            ],
        )
        with tf.control_dependencies([check_image]):
            return tf.identity(usable)

    def count_skip():
        count = skipped_records.variable.assign_add(1)
        log = tf.print(
            "WARNING: skipping a record whose image is missing, not a JPEG or "
            "truncated, in", source, "- skipped so far:", count,
            output_stream=sys.stderr,
        )
        with tf.control_dependencies([log]):
            return tf.constant(False)

    return tf.cond(usable, lambda: tf.constant(True), count_skip)


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
        # The files are already split between hosts in `list_files` (or by TFDS's
        # ReadConfig); tf.distribute must not shard a second time.
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
    return options
