"""The tf.data input pipeline for ImageNet-style classification.

One entry point, `build_dataset(config, split, input_context=None)`, for two sources:

- "tfrecord": shards in the TPU reference (`imagenet_to_gcs`) layout, local or `gs://`,
  with JPEG bytes under `image/encoded` and the class under `image/class/label`
  (1..1000 there, hence the default label offset of -1), parsed by
  `lambda_keras.data.records`;
- "tfds": any TFDS image-classification dataset read with the JPEG bytes kept encoded
  (`SkipDecoding`), so both sources share the decode-and-crop preprocessing.

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
with `skip_corrupt_records`, in a warning. See `list_files` and `_read_file`.

Use with `strategy.distribute_datasets_from_function(lambda ctx: build_dataset(config,
"train", ctx))`: the batch is per replica and the files are split between hosts.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fnmatch
import os
import sys

import keras
import numpy as np
import tensorflow as tf

from lambda_keras.data import manifest, preprocessing, records
from training import augmentation
from training.errors import ConfigError, DataIntegrityError
from training.input_config import SPLITS, InputConfig

_TFRECORD_READ_BUFFER_BYTES = 8 * 1024 * 1024
_STAT_THREADS = 32
# Problems named in a DataIntegrityError; the rest are counted.
_PROBLEMS_SHOWN = 3
# Records are numbered and their gaps counted a batch at a time: a tf.data function
# call per record costs more than this bookkeeping (docs/design.md, "Checking the shards").
_ACCOUNTING_BATCH = 32


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
    another size than the manifest says, not listed in it; see `list_files`) to the
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


@dataclasses.dataclass(frozen=True)
class ShardFile:
    """A TFRecord file to read: its path, size, and record count (-1 without a manifest)."""

    path: str
    size_bytes: int
    num_records: int


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


def list_files(
    config: InputConfig,
    split: str,
    input_context: tf.distribute.InputContext | None = None,
    skipped_records: SkippedRecordCounter | None = None,
) -> list[str]:
    """The TFRecord files this host reads for `split`, sorted by name, once checked.

    "train" and "minival" share `train_file_pattern`: minival is the last
    `minival_num_shards` files and train the rest. With an `input_context`, host i of
    n reads files i, i+n, i+2n, ..., so the hosts together read every file once.

    The files are checked before they are split, against `data_dir/manifest.json` when
    there is one (`lambda_keras.data.manifest`): a file the pattern matches but the
    manifest does not list (a stray file, a temporary file of an interrupted
    conversion), a listed file that is missing, and, among this host's files, one whose
    size differs from the manifest's (truncated, or another file) is a problem. Without
    a manifest the names are checked: temporary files, and gaps in a set named
    `<split>-NNNNN-of-MMMMM`, are problems, and two such sets of different counts are an
    error. A problem raises DataIntegrityError naming the file, or, with
    `skip_corrupt_records`, leaves that file out with a warning and an entry in
    `skipped_records.skipped_files`. Holding out minival and sharing between hosts work
    on the complete set, so a file left out never moves another between the splits.

    Raises:
      FileNotFoundError: `data_dir` does not exist or the pattern matches nothing
        (the message names the pattern).
      DataIntegrityError: see above; also when no file is left to read, the
        manifest's labels fall outside [0, num_classes) after the label offset, or
        there are fewer files than hosts to share them.
      ConfigError: minival_num_shards leaves no training file, or is 0 for "minival".
      ValueError: bad split.
    """
    return [shard.path for shard in list_shards(config, split, input_context, skipped_records)]


def list_shards(
    config: InputConfig,
    split: str,
    input_context: tf.distribute.InputContext | None,
    skipped_records: SkippedRecordCounter | None,
) -> list[ShardFile]:
    """`list_files`, with the size and record count of each file to read."""
    _check_split(split)
    if not tf.io.gfile.isdir(config.data_dir):
        raise FileNotFoundError(
            f"Input data_dir {config.data_dir!r} does not exist or is not a directory."
        )
    pattern = config.eval_file_pattern if split == "validation" else config.train_file_pattern
    full_pattern = os.path.join(config.data_dir, pattern)
    folder = os.path.join(config.data_dir, "")
    matched = sorted(path[len(folder):] for path in tf.io.gfile.glob(full_pattern))
    if not matched:
        raise FileNotFoundError(
            f"No TFRecord files match {full_pattern!r} (split {split!r})."
        )
    try:
        shard_manifest = manifest.read_manifest(config.data_dir)
    except manifest.ManifestError as error:
        raise DataIntegrityError(str(error)) from error
    if shard_manifest is None:
        print(f"Note: {config.data_dir!r} has no {manifest.MANIFEST_NAME}; its {split} files are checked by "
              "name and size only.", file=sys.stderr)
        names, problems = _names_without_manifest(config.data_dir, matched)
        listed = {}
    else:
        _check_manifest_labels(config, shard_manifest)
        listed = {
            name: shard for name, shard in shard_manifest.shards().items()
            if fnmatch.fnmatchcase(name, pattern)
        }
        names = sorted(listed)
        problems = {
            name: f"not listed in {manifest.MANIFEST_NAME} (a stray file, or a temporary file of an "
                  "interrupted conversion)"
            for name in matched if name not in listed
        }

    names = _names_of_this_host(config, split, names, input_context)

    sizes = _file_sizes([os.path.join(config.data_dir, name) for name in names])
    for name, size in zip(names, sizes):
        expected = listed.get(name)
        if size is None:
            problems.setdefault(name, "missing" + (
                f" ({manifest.MANIFEST_NAME} lists it with {expected.num_records} records)" if expected else ""
            ))
        elif expected is not None and size != expected.size_bytes:
            problems[name] = (
                f"{size} bytes, {manifest.MANIFEST_NAME} says {expected.size_bytes} (truncated, or another file)"
            )
    _report_problems(config, split, problems, skipped_records)
    shards = [
        ShardFile(os.path.join(config.data_dir, name), size, listed[name].num_records if listed else -1)
        for name, size in zip(names, sizes) if name not in problems
    ]
    if not shards:
        raise DataIntegrityError(
            f"No readable {split} files are left in {config.data_dir!r} after leaving out "
            f"{len(problems)} with problems."
        )
    return shards


def _names_of_this_host(
    config: InputConfig, split: str, names: list[str], input_context: tf.distribute.InputContext | None
) -> list[str]:
    """Of the split's sorted file names, those this host reads: minival held out of
    train, then every `num_input_pipelines`-th name from `input_pipeline_id`."""
    full_pattern = os.path.join(config.data_dir, config.eval_file_pattern if split == "validation"
                                else config.train_file_pattern)
    if split != "validation" and config.minival_num_shards:
        if config.minival_num_shards >= len(names):
            raise ConfigError(
                f"input.minival_num_shards={config.minival_num_shards} leaves no training "
                f"files: {full_pattern!r} matches only {len(names)}."
            )
        held_out = len(names) - config.minival_num_shards
        names = names[held_out:] if split == "minival" else names[:held_out]
    elif split == "minival":
        raise ConfigError(
            'Split "minival" needs input.minival_num_shards > 0 (the paper held out 20 of '
            "1024 training shards)."
        )
    if input_context is not None and input_context.num_input_pipelines > 1:
        pipelines = input_context.num_input_pipelines
        if len(names) < pipelines:
            raise DataIntegrityError(
                f"{len(names)} files for split {split!r} cannot be shared between "
                f"{pipelines} input pipelines (hosts); write more shards."
            )
        names = names[input_context.input_pipeline_id :: pipelines]
    return names


def records_per_host(config: InputConfig, split: str, hosts: int) -> tuple[int, ...] | None:
    """The records each of `hosts` input pipelines reads of `split`, from the manifest.

    The same files `list_shards` gives each host, counted as the manifest lists them
    (files that skip_corrupt_records leaves out still count: an upper bound). None
    for a TFDS source or a folder without a manifest.

    Raises:
      DataIntegrityError, ConfigError: as `list_files`.
    """
    if config.source != "tfrecord":
        return None
    try:
        shard_manifest = manifest.read_manifest(config.data_dir)
    except manifest.ManifestError as error:
        raise DataIntegrityError(str(error)) from error
    if shard_manifest is None:
        return None
    pattern = config.eval_file_pattern if split == "validation" else config.train_file_pattern
    listed = {name: shard for name, shard in shard_manifest.shards().items() if fnmatch.fnmatchcase(name, pattern)}
    counts = []
    for host in range(hosts):
        context = tf.distribute.InputContext(num_input_pipelines=hosts, input_pipeline_id=host,
                                             num_replicas_in_sync=hosts)
        counts.append(sum(listed[name].num_records
                          for name in _names_of_this_host(config, split, sorted(listed), context)))
    return tuple(counts)


def _names_without_manifest(data_dir: str, matched: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the names to read, {name: problem}) of the matched files of a folder without a manifest.

    Temporary files are problems; a set named `<split>-NNNNN-of-MMMMM` is completed to
    all its M names, the absent ones being problems (an interrupted conversion).

    Raises:
      DataIntegrityError: two such sets of one split with different counts.
    """
    problems = {
        name: "a temporary file of an interrupted conversion" for name in matched
        if records.TEMP_MARKER in name
    }
    names = {name for name in matched if name not in problems}
    counts: dict[tuple[str, str], set[int]] = {}
    for name in names:
        folder, file_name = os.path.split(name)
        parsed = records.parse_shard_name(file_name)
        if parsed is not None:
            counts.setdefault((folder, parsed[0]), set()).add(parsed[2])
    for (folder, split_name), num_shards in sorted(counts.items()):
        if len(num_shards) > 1:
            sets = " and ".join(f"{count} ({records.shard_name(split_name, 0, count)}, ...)"
                                for count in sorted(num_shards))
            raise DataIntegrityError(
                f"{os.path.join(data_dir, folder)!r} holds two sets of {split_name} shards, of {sets} "
                "files: reading both would read every image twice. Delete one set."
            )
        count = num_shards.pop()
        for index in range(count):
            name = os.path.join(folder, records.shard_name(split_name, index, count))
            if name not in names:
                names.add(name)
                problems[name] = f"missing from its set of {count} (an interrupted conversion?)"
    return sorted(names), problems


def _check_manifest_labels(config: InputConfig, shard_manifest: manifest.Manifest) -> None:
    first = shard_manifest.first_label + config.resolved_label_offset
    last = first + shard_manifest.num_classes - 1
    if first < 0 or last >= config.num_classes:
        raise DataIntegrityError(
            f"{manifest.manifest_path(config.data_dir)!r} stores labels {shard_manifest.first_label}.."
            f"{shard_manifest.first_label + shard_manifest.num_classes - 1}, which label_offset "
            f"{config.resolved_label_offset} maps to {first}..{last}, outside [0, {config.num_classes}) "
            "(input.num_classes)."
        )


def _file_sizes(paths: list[str]) -> list[int | None]:
    """The size in bytes of each file, None for a missing one."""

    def size(path: str) -> int | None:
        try:
            return tf.io.gfile.stat(path).length
        except tf.errors.NotFoundError:
            return None

    # One request per file on a remote file system: in parallel, so that a thousand
    # shards on GCS take seconds, not a minute.
    with concurrent.futures.ThreadPoolExecutor(max_workers=_STAT_THREADS) as pool:
        return list(pool.map(size, paths))


def _report_problems(
    config: InputConfig,
    split: str,
    problems: dict[str, str],
    skipped_records: SkippedRecordCounter | None,
) -> None:
    """Raises DataIntegrityError for `problems` ({name: problem}), or, with
    skip_corrupt_records, warns about each and records it in `skipped_records`."""
    paths = {os.path.join(config.data_dir, name): problem for name, problem in sorted(problems.items())}
    if paths and not config.skip_corrupt_records:
        listed = "; ".join(f"{path}: {problem}" for path, problem in list(paths.items())[:_PROBLEMS_SHOWN])
        more = f"; and {len(paths) - _PROBLEMS_SHOWN} more" if len(paths) > _PROBLEMS_SHOWN else ""
        raise DataIntegrityError(
            f"{len(paths)} problem(s) with the {split} files (input.skip_corrupt_records=false): {listed}{more}."
        )
    for path, problem in paths.items():
        print(f"WARNING: leaving out {path}: {problem}.", file=sys.stderr)
        if skipped_records is not None:
            skipped_records.skipped_files[path] = problem


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
      DataIntegrityError, FileNotFoundError, ConfigError: see `list_files`.
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
        examples, files = _read_tfrecords(config, split, input_context, deterministic, skipped_records)
        source = config.data_dir
    else:
        examples, files = _read_tfds(config, split, input_context), 1
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
        hosts_records = records_per_host(config, split, context.num_input_pipelines)
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
    """`examples` (passes over `files` files, in order, see `_read_file`), failing from
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


def _read_tfrecords(
    config: InputConfig,
    split: str,
    input_context: tf.distribute.InputContext | None,
    deterministic: bool,
    skipped_records: SkippedRecordCounter,
) -> tuple[tf.data.Dataset, int]:
    """(The examples (see `_read_file`) of this host's checked files, interleaved; the
    number of files)."""
    shards = list_shards(config, split, input_context, skipped_records)
    file_names = tf.data.Dataset.from_tensor_slices((
        [shard.path for shard in shards],
        np.array([shard.size_bytes for shard in shards], np.int64),
        np.array([shard.num_records for shard in shards], np.int64),
    ))
    if split == "train":
        # Reshuffled at every repetition (the repeat comes later in the pipeline).
        file_names = file_names.shuffle(len(shards), seed=config.seed)
    return file_names.interleave(
        lambda path, size_bytes, num_records: _read_file(config, path, size_bytes, num_records),
        cycle_length=min(config.interleave_cycle_length, len(shards)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    ), len(shards)


def _read_file(
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
    located = _locate(
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
            return _join_problems(gap_problem, unread_problem, skipped > 0, unread > 0)

        return {
            "image": batch["image"], "label": batch["label"], "source": tf.fill(tf.shape(skipped), path),
            "is_record": batch["is_record"], "decodable": batch["decodable"], "skipped": skipped + unread,
            "problem": tf.cond(
                tf.reduce_any(skipped + unread > 0), problems, lambda: tf.fill(tf.shape(skipped), "")
            ),
        }

    return _count_gaps(located.map(parse).ignore_errors(), describe)


def _locate(elements: tf.data.Dataset, size_of) -> tf.data.Dataset:
    """Numbers and places the elements of a stream, then marks its end.

    Each element becomes {"element": the element, "is_record": True, "index": its
    number, "offset": the sum of `size_of` over the elements before it, "end": offset
    plus its own size}; `size_of` maps a batch of elements to int64 [batch] sizes. One
    end-of-stream element follows: "is_record" False, "element" zeros, "index" the
    number of elements and "offset" and "end" their total size.
    """
    batches = elements.batch(_ACCOUNTING_BATCH)
    # An empty batch marks the end.
    batches = batches.concatenate(tf.data.Dataset.from_tensors(tf.nest.map_structure(
        lambda spec: tf.zeros([0, *spec.shape[1:]], spec.dtype), batches.element_spec
    )))

    def locate(state, batch):
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

    return batches.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), locate).unbatch()


def _count_gaps(elements: tf.data.Dataset, describe) -> tf.data.Dataset:
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

    batches = elements.batch(_ACCOUNTING_BATCH)
    return batches.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), count).unbatch()


def _join_problems(first: tf.Tensor, second: tf.Tensor, has_first: tf.Tensor, has_second: tf.Tensor) -> tf.Tensor:
    """The problems (tf.string) that are present (tf.bool, same shape), joined by "; "."""
    both = tf.strings.join([first, "; ", second])
    return tf.where(has_first, tf.where(has_second, both, first), tf.where(has_second, second, ""))


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


def _read_tfds(
    config: InputConfig,
    split: str,
    input_context: tf.distribute.InputContext | None,
) -> tf.data.Dataset:
    """The examples of a TFDS split, as `_read_file` gives those of a file, then an
    end-of-split element; an example whose JPEG header is damaged is counted."""
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
    located = _locate(
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
    return _count_gaps(checked.ignore_errors(), describe)


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
    it in its file (see `_read_file`), plus the example itself when its image is
    missing, not a JPEG or truncated (not "decodable"). The filter that follows drops
    unusable examples and every end-of-file element. With skip_corrupt_records=False
    any skip raises instead, naming the file.
    """
    is_record = example["is_record"]
    incomplete = tf.logical_and(is_record, tf.logical_not(example["decodable"]))
    skipped = example["skipped"] + tf.cast(incomplete, tf.int64)
    usable = tf.logical_and(is_record, tf.logical_not(incomplete))

    def problem():
        return _join_problems(
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
        # The files are already split between hosts in `list_files` (or by TFDS's
        # ReadConfig); tf.distribute must not shard a second time.
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
    return options
