"""The "tfds" source of the input pipeline: a TFDS image-classification dataset.

`read_examples` reads a split with its images kept encoded (`SkipDecoding`), so that
both sources share the decode-and-crop preprocessing, and accounts for every example
as the "tfrecord" source does for a file (`training.record_stream`).

What a user can get wrong is refused in one line, and by `check` before a run writes
anything (`training.preflight.check_data`):
- `input.tfds_name` names no registered TFDS dataset: ConfigError (nothing is
  downloaded to find out);
- the dataset lacks an encoded "image" (`tfds.features.Image`, not PNG) or an integer
  "label" (a `ClassLabel` or an int scalar): ConfigError;
- it is not prepared in `input.tfds_data_dir`: DataIntegrityError, saying to set
  `input.tfds_prepare=true` or `input.tfds_manual_dir`, which prepare it when the
  builder is opened (`open_builder`);
- `input.tfds_train_split` / `tfds_eval_split` / `tfds_minival_split` is not a split of
  it (or a slice it cannot give): ConfigError naming the key.
"""

from __future__ import annotations

import tensorflow as tf

from lambda_keras.data import preprocessing
from training import record_stream
from training.errors import ConfigError, DataIntegrityError, fail
from training.input_config import InputConfig

# The InputConfig field that names the TFDS split of each pipeline split.
SPLIT_KEYS = {"train": "tfds_train_split", "validation": "tfds_eval_split", "minival": "tfds_minival_split"}


def split_string(config: InputConfig, split: str) -> str:
    """The TFDS split string ("train[:98%]", ...) that `split` reads.

    Raises:
      ConfigError: "minival" without input.tfds_minival_split.
    """
    name = getattr(config, SPLIT_KEYS[split])
    if name is None:
        raise ConfigError(
            'Split "minival" of a TFDS source needs input.tfds_minival_split, e.g. '
            '"train[98%:]" with tfds_train_split="train[:98%]".'
        )
    return name


def open_builder(config: InputConfig):
    """The dataset's `tfds.core.DatasetBuilder`, prepared first with input.tfds_prepare
    or input.tfds_manual_dir, its features checked.

    Raises:
      ConfigError: an unknown input.tfds_name, or no encoded "image" and int "label".
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    try:
        builder = tfds.builder(config.tfds_name, data_dir=config.tfds_data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        fail("input.tfds_name", config.tfds_name,
             f"no such TFDS dataset in tensorflow-datasets {tfds.__version__} "
             "(names: https://www.tensorflow.org/datasets/catalog)")
    _check_features(config, builder)
    if config.tfds_prepare or config.tfds_manual_dir:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=config.tfds_manual_dir)
        )
    return builder


def _check_features(config: InputConfig, builder) -> None:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    features = builder.info.features
    image = features["image"] if "image" in features else None
    label = features["label"] if "label" in features else None
    integer_label = isinstance(label, tfds.features.ClassLabel) or (
        isinstance(label, tfds.features.Tensor) and label.shape == () and label.dtype.is_integer
    )
    png = isinstance(image, tfds.features.Image) and image.encoding_format == "png"
    if not isinstance(image, tfds.features.Image) or png or not integer_label:
        found = ", ".join(f"{key}: {type(value).__name__}" for key, value in features.items())
        fail("input.tfds_name", config.tfds_name,
             'this pipeline reads an encoded JPEG "image" (tfds.features.Image) and an integer "label" '
             f"(ClassLabel); the dataset's features are {found}{' (its images PNG)' if png else ''}")


def num_classes(builder) -> int | None:
    """The label feature's number of classes, None when it is a plain integer."""
    return getattr(builder.info.features["label"], "num_classes", None)


def num_examples(config: InputConfig, builder, split: str) -> int:
    """The examples `split` reads (its TFDS split string, slices applied).

    Raises:
      DataIntegrityError: the dataset is not prepared.
      ConfigError: the split string names no split of it, or a slice it cannot give.
    """
    if not builder.is_prepared():
        raise DataIntegrityError(
            f"TFDS dataset {config.tfds_name!r} is not prepared in {builder.data_dir!r} (input.tfds_data_dir): set "
            "input.tfds_prepare=true to download and prepare it, or input.tfds_manual_dir to prepare it from files "
            "you downloaded."
        )
    name = split_string(config, split)
    try:
        return builder.info.splits[name].num_examples
    except (KeyError, ValueError) as error:
        reason = str(error).strip('"').splitlines()[0]
        fail(f"input.{SPLIT_KEYS[split]}", name, f"not a split of TFDS dataset {config.tfds_name!r} ({reason})")


def check(config: InputConfig, splits: tuple[str, ...]) -> tuple[dict[str, int], int | None]:
    """Opens and checks the dataset for `splits` (see the module doc), before any read.

    Returns:
      ({split: its number of examples}, the label feature's number of classes or None).
    """
    builder = open_builder(config)
    return {split: num_examples(config, builder, split) for split in splits}, num_classes(builder)


def read_examples(
    config: InputConfig, split: str, input_context: tf.distribute.InputContext | None
) -> tf.data.Dataset:
    """The examples of a TFDS split, in the form of `tfrecord_source.read_file`'s, then an
    end-of-split element; an example whose JPEG header is damaged is counted.

    Raises:
      ConfigError, DataIntegrityError: see the module doc.
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    builder = open_builder(config)
    split_name = split_string(config, split)
    if builder.is_prepared():
        # A bad split string fails here in one line. (Under `tfds.testing.mock_data` the
        # dataset is not prepared, and as_dataset serves any split.)
        num_examples(config, builder, split)
    read_config = tfds.ReadConfig(
        input_context=input_context,
        interleave_cycle_length=config.interleave_cycle_length,
        shuffle_seed=config.seed,
        # Caching and prefetching are this pipeline's decisions.
        try_autocache=False,
        skip_prefetch=True,
    )
    try:
        examples = builder.as_dataset(
            split=split_name,
            shuffle_files=split == "train",
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=read_config,
        )
    except AssertionError:  # TFDS's "could not find data in ...": not prepared.
        num_examples(config, builder, split)
        raise
    source = f"{config.tfds_name}:{split_name}"
    located = record_stream.locate(
        examples.map(lambda example: {"image": example["image"], "label": example["label"]}),
        lambda batch: tf.ones_like(batch["label"], tf.int64),
    )

    def check_header(element):
        return {
            "image": element["element"]["image"], "label": element["element"]["label"],
            "decodable": preprocessing.is_decodable_jpeg(element["element"]["image"]),
            **{key: element[key] for key in ("is_record", "index", "offset", "end")},
        }

    def describe(batch, skipped, skipped_from):
        def problems():
            problem = tf.strings.join([
                source, ": ", tf.strings.as_string(skipped), " example(s) from number ",
                tf.strings.as_string(skipped_from), " hold a JPEG with a damaged header",
            ])
            return tf.where(skipped > 0, problem, "")

        return {
            "image": batch["image"], "label": batch["label"], "source": tf.fill(tf.shape(skipped), source),
            "is_record": batch["is_record"], "decodable": batch["decodable"], "skipped": skipped,
            "problem": tf.cond(tf.reduce_any(skipped > 0), problems, lambda: tf.fill(tf.shape(skipped), "")),
        }

    # In order (deterministic), so that a dropped example leaves a gap in the indices.
    checked = located.map(check_header, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return record_stream.count_gaps(checked.ignore_errors(), describe)
