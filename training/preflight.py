"""What a training run checks before it writes anything: that its data can feed it.

`python -m training.train` runs `check_data` after loading the config and creating the
strategy, and before it takes model_dir or writes config.yaml, so that a refused run
leaves model_dir as it was (absent, for a new one). What can be known up front, cheaply:

- the split's files exist and match their manifest (`shard_set.list_shards`); for a
  TFDS source, the dataset exists, has the features, the splits and is prepared
  (`tfds_source.check`);
- from the manifest's record counts (TFDS: its split sizes), every host has one full
  training step (training drops the last partial batch, so fewer records would give
  no step ever) and at least one validation example (one full validation step with
  input.eval_drop_remainder);
- the manifest's label map (TFDS: the label feature's classes), after the label
  offset, fits [0, input.num_classes) (`shard_set.labels_outside_classes`);
- the first record of one shard of each split is a tf.Example with the configured
  image (bytes) and label (int64) features, its label in range.

The decision over the counts is `problems`, a pure function of the numbers, so that it
can be checked against an independent statement of the rules (tests/test_train_preflight.py).
What the manifest cannot tell (a folder without one, a TFDS split shared between
several hosts, records that turn out unreadable) is caught while the data are read: a
pass over a split without one usable record stops the run
(`input_pipeline.NO_USABLE_RECORDS`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from lambda_keras.data import manifest
from training import shard_set, tfds_source
from training.errors import DataIntegrityError


@dataclasses.dataclass(frozen=True)
class DataPlan:
    """The numbers a run's data must fit.

    train_records / validation_records: records each host (input pipeline) reads of
      the split, from the manifest or TFDS's split sizes; None when unknown (no
      manifest, a TFDS split shared between hosts).
    global_batch_size / eval_global_batch_size: examples per step over all replicas.
    replicas / hosts: replicas in sync, and the hosts they are spread over (each host
      reads global batch / hosts examples per step).
    eval_drop_remainder: validation drops its last partial step.
    num_classes: the classifier's classes.
    label_range: the smallest and largest class id the data hold after the label
      offset (from the manifest's label map or TFDS's ClassLabel); None when unknown.
    """

    train_records: tuple[int, ...] | None
    validation_records: tuple[int, ...] | None
    global_batch_size: int
    eval_global_batch_size: int
    replicas: int
    hosts: int
    eval_drop_remainder: bool
    num_classes: int
    label_range: tuple[int, int] | None


def problems(plan: DataPlan) -> list[str]:
    """Why the run cannot train and validate on its data ([] when it can), one
    sentence each, naming the config keys to change."""
    found = []
    batches = {"input.global_batch_size": plan.global_batch_size,
               "input.eval_global_batch_size": plan.eval_global_batch_size}
    for key, batch in batches.items():
        if batch % plan.replicas:
            found.append(f"{key}={batch} is not divisible by the {plan.replicas} replicas in sync; use a multiple "
                         f"of {plan.replicas}")
    if found:
        return found
    host_batch = plan.global_batch_size // plan.hosts
    if plan.train_records is not None and min(plan.train_records) < host_batch:
        found.append(
            f"the train split has {_describe(plan.train_records)} records, fewer than one training step needs "
            f"(input.global_batch_size={plan.global_batch_size}{_per_host(plan.global_batch_size, plan.hosts)}); "
            "training drops the last partial batch, so no step could run. Lower input.global_batch_size or add "
            "training data"
        )
    if plan.validation_records is not None:
        eval_host_batch = plan.eval_global_batch_size // plan.hosts
        if min(plan.validation_records) == 0:
            found.append(f"the validation split has {_describe(plan.validation_records)} records; every host needs "
                         "at least one to validate on. Add validation data")
        elif plan.eval_drop_remainder and min(plan.validation_records) < eval_host_batch:
            found.append(
                f"the validation split has {_describe(plan.validation_records)} records, fewer than one validation "
                f"step needs (eval global batch {plan.eval_global_batch_size}"
                f"{_per_host(plan.eval_global_batch_size, plan.hosts)}) with input.eval_drop_remainder=true. "
                "Lower input.eval_global_batch_size or set input.eval_drop_remainder=false"
            )
    if plan.label_range is not None:
        labels = shard_set.labels_outside_classes(*plan.label_range, plan.num_classes)
        found += [labels] if labels is not None else []
    return found


def _describe(records: Sequence[int]) -> str:
    if len(records) == 1:
        return str(records[0])
    return f"{sum(records)} ({' + '.join(str(count) for count in records)} over the hosts)"


def _per_host(batch: int, hosts: int) -> str:
    return "" if hosts == 1 else f", {batch // hosts} on each of {hosts} hosts"


def check_data(input_config, replicas: int, hosts: int) -> None:
    """Refuses a run whose data cannot feed it (see the module doc), before any write.

    Args:
      input_config: the run's `training.input_config.InputConfig`.
      replicas: replicas in sync; hosts: input pipelines (hosts) they read on.

    Raises:
      DataIntegrityError: one line naming every problem found.
      FileNotFoundError, ConfigError: see `shard_set.list_files` and `tfds_source`.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    label_range = None
    found = []
    if input_config.source == "tfrecord":
        for split in ("train", "validation"):
            # Lists (and checks against the manifest) every host's files.
            shards = [
                shard_set.list_shards(input_config, split, tf.distribute.InputContext(
                    num_input_pipelines=hosts, input_pipeline_id=host, num_replicas_in_sync=replicas), None)
                for host in range(hosts)
            ]
            first_shard = next((shard for host_shards in shards for shard in host_shards if shard.num_records), None)
            if first_shard is not None:
                found += _first_record_problems(input_config, first_shard.path)
        shard_manifest = manifest.read_manifest(input_config.data_dir)
        if shard_manifest is not None:
            first = shard_manifest.first_label + input_config.resolved_label_offset
            label_range = (first, first + shard_manifest.num_classes - 1)
        train_records = shard_set.records_per_host(input_config, "train", hosts)
        validation_records = shard_set.records_per_host(input_config, "validation", hosts)
    else:
        examples, num_classes = tfds_source.check(input_config, ("train", "validation"))
        # TFDS shares a split's files between hosts, so one host's share is known only for one host.
        train_records = (examples["train"],) if hosts == 1 else None
        validation_records = (examples["validation"],) if hosts == 1 else None
        if num_classes is not None:
            offset = input_config.resolved_label_offset
            label_range = (offset, offset + num_classes - 1)
    plan = DataPlan(
        train_records=train_records,
        validation_records=validation_records,
        global_batch_size=input_config.global_batch_size,
        eval_global_batch_size=input_config.eval_global_batch_size or input_config.global_batch_size,
        replicas=replicas,
        hosts=hosts,
        eval_drop_remainder=input_config.eval_drop_remainder,
        num_classes=input_config.num_classes,
        label_range=label_range,
    )
    found = problems(plan) + found
    if found:
        source = input_config.data_dir if input_config.source == "tfrecord" else f"TFDS {input_config.tfds_name}"
        raise DataIntegrityError(f"{source} cannot feed this run: " + "; ".join(found) + ".")


def _first_record_problems(input_config, path: str) -> list[str]:
    """What is wrong with the first record of the shard at `path` ([] when nothing)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    try:
        serialized = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    except tf.errors.DataLossError as error:
        return [f"{path}: its first record is unreadable ({error.message.splitlines()[0]})"]
    if serialized is None:
        return []
    try:
        features = tf.train.Example.FromString(serialized.numpy()).features.feature
    except Exception:  # pylint: disable=broad-except  (protobuf's DecodeError)
        return [f"{path}: its first record is not a tf.Example"]
    image_key, label_key = input_config.image_key, input_config.label_key
    found = []
    images = features[image_key].bytes_list.value if image_key in features else []
    if len(images) != 1 or not images[0]:
        found.append(f"{path}: its first record has no image bytes under input.image_key={image_key!r} "
                     f"(its features: {', '.join(sorted(features)) or 'none'})")
    labels = features[label_key].int64_list.value if label_key in features else []
    if len(labels) != 1:
        found.append(f"{path}: its first record has no int64 label under input.label_key={label_key!r} "
                     f"(its features: {', '.join(sorted(features)) or 'none'})")
    elif not 0 <= labels[0] + input_config.resolved_label_offset < input_config.num_classes:
        found.append(f"{path}: its first record's label {labels[0]} with input.label_offset "
                     f"{input_config.resolved_label_offset} is outside [0, {input_config.num_classes}) "
                     "(input.num_classes)")
    return found
