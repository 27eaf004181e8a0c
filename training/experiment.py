"""One training run: data, model, optimizer, callbacks, `model.fit`, evaluation.

`run_experiment(config, strategy)` is what `python -m training.train` runs once it has
chosen the Keras backend. `strategy` is a `tf.distribute.Strategy` under the
TensorFlow backend, or a `training.jax_distribution.JaxDataParallel` under JAX, which
offers the same few members (`num_replicas_in_sync`, `scope`,
`distribute_datasets_from_function`); `training.strategies` creates either and
answers the questions that differ (TPU, chief, worker index).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import time
import warnings
from typing import Any, Iterator

import keras
import tensorflow as tf
import yaml

from lambda_keras import models, recipe
from lambda_keras.atomic_files import write_text_atomically
from training import callbacks as callbacks_lib
from training import config as config_lib
from training import folder_lock, input_pipeline, optimization, preflight, strategies
from training.config import ConfigError, ExperimentConfig
from training.errors import DataIntegrityError

# Under TPUStrategy several steps per tf.function call hide the host round trip; 100
# is tf-models' usual value, capped by the steps of an epoch.
TPU_STEPS_PER_EXECUTION = 100
BEST_METRIC = "val_top1"


def run_experiment(
    config: ExperimentConfig, strategy: strategies.Strategy
) -> tuple[keras.Model, dict[str, Any]]:
    """Trains (resuming from model_dir/backup if present) and evaluates.

    The chief holds model_dir's lock throughout (`training.folder_lock`), so a second
    run into the same model_dir is refused instead of interleaving with this one.

    Returns:
      The model, holding the EMA weights (when train.ema_decay is set), and the
      results written to model_dir/eval_results.json: validation "top1", "top5",
      "loss", and "start_epoch", "start_step" (not 0 after a resume), "final_step",
      "train_seconds", "skipped_train_records", "skipped_eval_records" (per pass: the
      last), "skipped_train_files", "skipped_eval_files" (left out at the start).

    Before anything is written into model_dir, the config is checked against the
    strategy (batch sizes, steps per execution) and the data against the config
    (`training.preflight`): a refused run leaves model_dir as it was.

    Raises:
      FolderBusyError: another run holds model_dir.
      ConfigError, DataIntegrityError: refused before any write (see above), or
        DataIntegrityError when a pass over a split gives no usable record.
      DivergedError: the loss or a weight became non-finite (see
        `callbacks.DivergenceGuard`); the backup and checkpoints keep the last
        finite state.
    """
    replicas = strategy.num_replicas_in_sync
    check_batch_sizes(config, replicas)
    resolve_steps_per_execution(config, strategy)
    preflight.check_data(config.input, replicas, strategies.input_pipelines(strategy))
    if not strategies.is_chief(strategy):
        return _run_experiment(config, strategy)
    with folder_lock.held_exclusively(config.model_dir, "training run"):
        return _run_experiment(config, strategy)


def _run_experiment(
    config: ExperimentConfig, strategy: strategies.Strategy
) -> tuple[keras.Model, dict[str, Any]]:
    replicas = strategy.num_replicas_in_sync
    chief = strategies.is_chief(strategy)
    check_same_run(config, chief)
    steps_per_execution = resolve_steps_per_execution(config, strategy)
    precision = resolve_precision(config, strategy)
    print(config.to_yaml(), flush=True)
    print(f"Keras {keras.version()} with the {keras.backend.backend()} backend, TensorFlow "
          f"{tf.__version__}, TF_ENABLE_ONEDNN_OPTS="
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS')}, {_describe(strategy)} with "
          f"{replicas} replica(s), {precision}, steps_per_execution "
          f"{steps_per_execution}, {config.steps_per_epoch} steps per epoch, peak "
          f"learning rate {optimization.peak_learning_rate(config):g}", flush=True)
    if chief:
        tf.io.gfile.makedirs(config.model_dir)
        write_text_atomically(os.path.join(config.model_dir, "config.yaml"), config.to_yaml())
    if config.train.seed is not None:
        keras.utils.set_random_seed(config.train.seed)
    keras.config.set_dtype_policy(precision)

    train_data, eval_data, skipped_train, skipped_eval = build_datasets(config, strategy)
    model = build_and_compile(config, strategy, steps_per_execution)
    stats = callbacks_lib.TrainingStats(config.input.global_batch_size, skipped_train)
    callbacks = build_callbacks(config, strategy, stats)

    start = time.perf_counter()
    with warnings.catch_warnings(), _data_errors_in_one_line(config):
        # Keras warns that the input "ran out of data; interrupting training" whenever a
        # dataset of unknown length ends: here the validation set at the end of every
        # pass, which is how an evaluation ends, not an interruption (training repeats).
        warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
        model.fit(
            train_data,
            epochs=config.train.epochs,
            steps_per_epoch=config.steps_per_epoch,
            validation_data=eval_data,
            validation_freq=config.train.validation_freq,
            callbacks=callbacks,
            verbose="auto" if chief else 2,
            shuffle=False,  # tf.data shuffles; Keras would warn that it ignores shuffle=True
        )
        train_seconds = time.perf_counter() - start
        # fit() ends by copying the EMA into the weights, so this evaluates the EMA model.
        metrics = model.evaluate(eval_data, return_dict=True, verbose="auto" if chief else 0)
    results = {
        "top1": float(metrics["top1"]),
        "top5": float(metrics["top5"]),
        "loss": float(metrics["loss"]),
        "epochs": config.train.epochs,
        "start_epoch": stats.start_epoch if stats.start_epoch is not None else config.train.epochs,
        "start_step": stats.start_step,
        "final_step": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "train_seconds": train_seconds,
        "skipped_train_records": skipped_train.count,
        "skipped_eval_records": skipped_eval.count,
        "skipped_train_files": sorted(skipped_train.skipped_files),
        "skipped_eval_files": sorted(skipped_eval.skipped_files),
    }
    if chief:
        write_text_atomically(os.path.join(config.model_dir, "eval_results.json"), json.dumps(results, indent=2))
    return model, results


@contextlib.contextmanager
def _data_errors_in_one_line(config: ExperimentConfig) -> Iterator[None]:
    """Turns TensorFlow's errors for bad data met while training or evaluating into a
    DataIntegrityError of one line.

    Those are: a JPEG that fails mid-decode (the pipeline reads each JPEG's header before
    batching and drops the damaged ones; a later scan can still be invalid, a progressive
    JPEG, and that decode fails inside the map fused with the batch, where no single
    record can be dropped), and the pipeline's own checks (`input_pipeline.data_error_message`:
    a pass without one usable record, a corrupt record with skip_corrupt_records=false, a
    label out of range).
    """
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        message = input_pipeline.data_error_message(error)
        if message is not None:
            raise DataIntegrityError(f"{message}. `python -m training.verify_data {config.input.data_dir}` "
                                     "checks every record.") from None
        if "Invalid JPEG data" not in error.message:
            raise
        raise DataIntegrityError(
            f"An image in {config.input.data_dir} does not decode (Invalid JPEG data); `python -m "
            f"training.verify_data {config.input.data_dir} --decode_images` names its record. Rewrite that "
            "shard (and its manifest entry); the rerun resumes from the backup."
        ) from None


# Keys that say where a run reads, writes or executes, or how often it backs up, not
# what it computes: a rerun may change them and still resume.
LOCATION_KEYS = frozenset({
    "model_dir", "input.data_dir", "input.tfds_data_dir", "input.tfds_manual_dir", "runtime.strategy", "runtime.tpu",
    "train.backup_every_steps",
})


def check_same_run(config: ExperimentConfig, chief: bool = True) -> None:
    """Raises ConfigError when model_dir holds a run with another config, or (for the
    chief) a backup, checkpoints or a log without the config.yaml a run writes first.

    A rerun with the same command resumes from model_dir/backup; a rerun with a changed
    config would mix two runs in one log and one backup, and would overwrite the
    record of the first (config.yaml). Checked before anything is written. A model_dir
    whose run left no backup, checkpoint or log (it failed before its first backup)
    holds nothing to mix with: its config.yaml is replaced, not held against the rerun.
    Progress without a config.yaml is not a run of this tool (or one whose record was
    deleted): the run would resume from, or overwrite, files it cannot vouch for. Other
    workers may keep their backups in a model_dir of their own, without config.yaml.
    """
    path = os.path.join(config.model_dir, "config.yaml")
    if not holds_progress(config.model_dir):
        return
    if not tf.io.gfile.exists(path):
        if not chief:
            return
        raise ConfigError(
            f"{config.model_dir} holds a backup, checkpoints or a train_log.csv but no config.yaml, which every "
            "run writes before them: it is not a run this command can resume or overwrite; use a new --model_dir."
        )
    try:
        with tf.io.gfile.GFile(path) as file:
            text = file.read()
        recorded = config_lib.from_dict(config_lib.load_yaml(text) or {})
    except (ConfigError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"{path} holds a run whose config this version cannot read ({error}); "
            "use a new --model_dir."
        ) from None
    before, after = _flatten(recorded.to_dict()), _flatten(config.to_dict())
    changed = sorted(key for key in before.keys() | after.keys()
                     if key not in LOCATION_KEYS and before.get(key) != after.get(key))
    if changed:
        differences = ", ".join(f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in changed)
        raise ConfigError(
            f"{config.model_dir} holds a run with another config ({differences}); rerun with the same "
            "config to resume it, or use a new --model_dir."
        )


def holds_progress(model_dir: str) -> bool:
    """Whether a run in model_dir got as far as a backup, a checkpoint or a log row."""
    backups = tf.io.gfile.glob(os.path.join(model_dir, "backup", "*")) if tf.io.gfile.isdir(
        os.path.join(model_dir, "backup")) else []
    checkpoints = tf.io.gfile.glob(os.path.join(model_dir, "checkpoints", "*.keras"))
    return bool(backups or checkpoints or tf.io.gfile.exists(os.path.join(model_dir, "train_log.csv")))


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _describe(strategy: strategies.Strategy) -> str:
    if strategies.is_jax(strategy):
        return f"JAX DataParallel on {strategy.platform.upper()} ({strategy.process_count} host(s))"
    return type(strategy).__name__


def check_batch_sizes(config: ExperimentConfig, replicas: int) -> None:
    """Raises ConfigError unless both global batches divide evenly among the replicas."""
    batches = {"input.global_batch_size": config.input.global_batch_size}
    if config.input.eval_global_batch_size is not None:
        batches["input.eval_global_batch_size"] = config.input.eval_global_batch_size
    for key, batch in batches.items():
        if batch % replicas:
            raise ConfigError(
                f"Invalid config {key}={batch}: not divisible by the {replicas} replicas "
                f"in sync; use a multiple of {replicas}."
            )


def resolve_steps_per_execution(config: ExperimentConfig, strategy: strategies.Strategy) -> int:
    """train.steps_per_execution, or its default; rejects values Keras cannot run."""
    tpu = strategies.is_tpu_strategy(strategy)
    requested = config.train.steps_per_execution
    if requested is None:
        return min(TPU_STEPS_PER_EXECUTION, config.steps_per_epoch) if tpu else 1
    if requested > 1 and strategy.num_replicas_in_sync > 1 and not tpu and not strategies.is_jax(strategy):
        raise ConfigError(
            f"Invalid config train.steps_per_execution={requested}: Keras fit under "
            f"{type(strategy).__name__} fails with more than 1 step per execution "
            "(keras-team/keras#19246); use 1 or null."
        )
    return requested


def resolve_precision(config: ExperimentConfig, strategy: strategies.Strategy) -> str:
    """runtime.mixed_precision, with "auto": bfloat16 on TPU, float16 on GPU, else float32."""
    if config.runtime.mixed_precision != "auto":
        return config.runtime.mixed_precision
    if strategies.is_tpu_strategy(strategy):
        return "mixed_bfloat16"
    on_gpu = strategy.platform == "gpu" if strategies.is_jax(strategy) else tf.config.list_logical_devices("GPU")
    if on_gpu:
        # Keras wraps the optimizer in a LossScaleOptimizer (dynamic loss scaling).
        return "mixed_float16"
    return "float32"


def build_datasets(config: ExperimentConfig, strategy: strategies.Strategy):
    """The distributed training and validation datasets.

    Each replica gets [global_batch / replicas, image_size, image_size, 3] images and
    int32 [global_batch / replicas] labels; each host reads its share of the files
    (`distribute_datasets_from_function`). With several replicas the validation
    batches also carry float32 [global_batch / replicas] example weights: the last
    steps are padded with weight-0 examples so that every replica gets a full batch at
    every step and every host the same number of steps (an empty per-replica batch
    fails in TensorFlow's kernels; static shapes on TPU), and top-1/top-5 count the
    real examples only (input.eval_drop_remainder=true drops the partial step instead).

    Returns:
      (train, validation, skipped-train counter, skipped-validation counter).
    """
    input_config = config.input
    pad_evaluation = strategy.num_replicas_in_sync > 1
    # The counters are host variables, created outside the strategy scope.
    skipped_train = input_pipeline.SkippedRecordCounter("skipped_train_records")
    skipped_eval = input_pipeline.SkippedRecordCounter("skipped_eval_records")
    train = strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.build_dataset(input_config, "train", context, skipped_train)
    )
    validation = strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.build_dataset(
            input_config, "validation", context, skipped_eval, pad_evaluation=pad_evaluation
        )
    )
    return train, validation, skipped_train, skipped_eval


def build_model(config: ExperimentConfig, synchronized_batch_norm: bool = False) -> keras.Model:
    """The configured network, [batch, size, size, 3] -> [batch, classes] probabilities.

    Layers take Keras' global dtype policy (set from runtime.mixed_precision); the
    classifier runs in float32 (Keras' mixed-precision advice: softmax and loss in
    float32). With `synchronized_batch_norm`, every batch norm (the lambda layers'
    included) computes its statistics over the global batch.
    """
    size = config.input.image_size
    return models.build_model(
        config.model.to_dict(),
        input_shape=(size, size, 3),
        classes=config.input.num_classes,
        classifier_activation="softmax",
        head_dtype="float32",
        synchronized_batch_norm=synchronized_batch_norm,
    )


def build_and_compile(
    config: ExperimentConfig, strategy: strategies.Strategy, steps_per_execution: int = 1
) -> keras.Model:
    """Model, optimizer, loss and metrics, created inside `strategy.scope()`."""
    jit_compile = config.runtime.jit_compile
    jax = strategies.is_jax(strategy)
    if jit_compile is True and strategy.num_replicas_in_sync > 1 and not (
        strategies.is_tpu_strategy(strategy) or jax
    ):
        raise ConfigError(
            f"Invalid config runtime.jit_compile=true: Keras cannot compile "
            f"{type(strategy).__name__} steps with XLA; use auto."
        )
    with strategy.scope():
        # Under JAX a batch norm over the sharded batch sees all of it already.
        model = build_model(config, synchronized_batch_norm=not jax and strategy.num_replicas_in_sync > 1)
        optimization.apply_coupled_weight_decay(model, config.train.weight_decay)
        model.compile(
            optimizer=optimization.build_optimizer(config),
            loss=recipe.SmoothedCrossEntropy(
                config.input.num_classes, config.train.label_smoothing
            ),
            # Weighted: the padding of the last validation steps weighs 0 (build_datasets).
            weighted_metrics=[recipe.TopKAccuracy(1), recipe.TopKAccuracy(5)],
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
        )
        if not jax and not tf.distribute.has_strategy():
            # Under a tf.distribute strategy Keras builds the optimizer before fit traces the
            # train step; without one it builds it inside that first trace, and TensorFlow
            # traces a function that creates variables twice (the second time to run it
            # without creating them). Built here, the same variables: one trace.
            model.optimizer.build(model.trainable_variables)
    return model


def build_callbacks(
    config: ExperimentConfig,
    strategy: strategies.Strategy,
    stats: callbacks_lib.TrainingStats,
) -> list[keras.callbacks.Callback]:
    """The callbacks, in the order they must run at an epoch's end.

    1. FreeSpaceCheck, then DivergenceGuard: a non-finite loss or weight ends the run
       before anything of the epoch is saved. Then TrainingStats adds learning rate,
       images/s and skipped records to the logs.
    2. Chief only: the CSV row of the epoch, before the backup, so that every epoch
       the backup has done has its row (a resumed run drops the rows of the epochs it
       redoes).
    3. BackupAndRestore, before SwapEMAWeights swaps the EMA in (a backup of swapped
       weights would resume from the EMA). Every worker keeps its own backup (the
       chief's in model_dir/backup).
    4. SwapEMAWeights puts the EMA weights in for validation and, at the epoch's end,
       for the checkpoints that follow; it swaps back at the next epoch's start.
    5. Chief only: last and best .keras checkpoints, TensorBoard.
    """
    model_dir = config.model_dir
    chief = strategies.is_chief(strategy)
    csv_path = os.path.join(model_dir, "train_log.csv")
    backup_dir = os.path.join(model_dir, "backup")
    if not chief:
        backup_dir = os.path.join(backup_dir, f"worker_{strategies.worker_index(strategy)}")
    # Created here, idempotently: BackupAndRestore checks for its directory and then
    # calls os.makedirs, which fails when another worker creating backup/worker_<i>
    # made backup/ in between (seen in a two-worker CI run).
    tf.io.gfile.makedirs(backup_dir)
    callbacks: list[keras.callbacks.Callback] = [
        callbacks_lib.FreeSpaceCheck(model_dir), callbacks_lib.DivergenceGuard(backup_dir), stats
    ]
    if chief:
        callbacks.append(callbacks_lib.EpochLog(csv_path))
    callbacks.append(
        keras.callbacks.BackupAndRestore(
            backup_dir,
            save_freq=config.train.backup_every_steps or "epoch",
            double_checkpoint=True,
            delete_checkpoint=not config.train.keep_backup,
        )
    )
    if config.train.use_ema:
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    if chief:
        callbacks += [
            callbacks_lib.AtomicCheckpoint(os.path.join(model_dir, "checkpoints", "last.keras")),
            callbacks_lib.AtomicCheckpoint(
                os.path.join(model_dir, "checkpoints", "best.keras"),
                monitor=BEST_METRIC,
                initial_best=_best_logged_value(csv_path, BEST_METRIC),
            ),
            keras.callbacks.TensorBoard(
                os.path.join(model_dir, "tensorboard"),
                update_freq=config.train.tensorboard_update_freq,
                write_graph=False,
                profile_batch=0,
            ),
        ]
    return callbacks


def _best_logged_value(csv_path: str, key: str) -> float | None:
    """The highest `key` in an earlier run's CSV log (None without one)."""
    if not tf.io.gfile.exists(csv_path):
        return None
    values = []
    with tf.io.gfile.GFile(csv_path) as file:
        for row in csv.DictReader(file):
            try:
                values.append(float(row.get(key) or "nan"))
            except ValueError:  # CSVLogger writes "NA" for epochs without validation.
                continue
    return max((value for value in values if value == value), default=None)
